//! Archive extraction (tar, tar.gz, zip) that refuses anything that could write outside the
//! destination: absolute paths, `..` components, and links of any kind.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use crate::error::OpError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Tar,
    TarGz,
    Zip,
}

impl ArchiveFormat {
    /// Guess from a file name or URL path.
    pub fn from_name(name: &str) -> Option<Self> {
        let n = name.to_ascii_lowercase();
        let n = n.split(['?', '#']).next().unwrap_or("");
        if n.ends_with(".tar.gz") || n.ends_with(".tgz") {
            Some(Self::TarGz)
        } else if n.ends_with(".tar") {
            Some(Self::Tar)
        } else if n.ends_with(".zip") {
            Some(Self::Zip)
        } else {
            None
        }
    }
}

/// A path from an archive, checked to stay inside the destination.
fn safe_relative(name: &str, raw: &Path) -> Result<PathBuf, OpError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(OpError::user(format!(
                    "archive `{name}` contains the unsafe path `{}` (absolute or with `..`); refusing to extract",
                    raw.display()
                )));
            }
        }
    }
    Ok(out)
}

fn link_error(name: &str, entry: &Path) -> OpError {
    OpError::user(format!(
        "archive `{name}` contains a link `{}`; links are not extracted",
        entry.display()
    ))
}

/// Extract `archive` into `dest`.
pub fn extract(archive: &Path, format: ArchiveFormat, dest: &Path) -> Result<u64, OpError> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = fs::File::open(archive).map_err(|e| OpError::io(archive, e))?;
    fs::create_dir_all(dest).map_err(|e| OpError::io(dest, e))?;
    match format {
        ArchiveFormat::Tar => extract_tar(&name, file, dest),
        ArchiveFormat::TarGz => extract_tar(&name, flate2::read::GzDecoder::new(file), dest),
        ArchiveFormat::Zip => extract_zip(&name, file, dest),
    }
}

fn write_entry(dest: &Path, rel: &Path, mut r: impl Read) -> Result<(), OpError> {
    let target = dest.join(rel);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| OpError::io(parent, e))?;
    }
    let mut f = fs::File::create(&target).map_err(|e| OpError::io(&target, e))?;
    io::copy(&mut r, &mut f).map_err(|e| OpError::io(&target, e))?;
    Ok(())
}

fn extract_tar(name: &str, r: impl Read, dest: &Path) -> Result<u64, OpError> {
    let bad =
        |e: io::Error| OpError::user(format!("archive `{name}` is not a valid tar file: {e}"));
    let mut ar = tar::Archive::new(r);
    let mut n = 0;
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let rel = safe_relative(name, &raw)?;
        let ty = entry.header().entry_type();
        if ty.is_dir() {
            fs::create_dir_all(dest.join(&rel)).map_err(|e| OpError::io(&dest.join(&rel), e))?;
        } else if ty.is_symlink() || ty.is_hard_link() {
            return Err(link_error(name, &raw));
        } else if ty.is_file() {
            write_entry(dest, &rel, entry)?;
            n += 1;
        }
        // Other entry kinds (pax headers, devices, fifos) are skipped.
    }
    Ok(n)
}

fn extract_zip(name: &str, file: fs::File, dest: &Path) -> Result<u64, OpError> {
    let bad = |e: zip::result::ZipError| {
        OpError::user(format!("archive `{name}` is not a valid zip file: {e}"))
    };
    let mut z = zip::ZipArchive::new(file).map_err(bad)?;
    let mut n = 0;
    for i in 0..z.len() {
        let entry = z.by_index(i).map_err(bad)?;
        let raw = PathBuf::from(entry.name());
        let rel = safe_relative(name, &raw)?;
        if entry.unix_mode().is_some_and(|m| m & 0o170000 == 0o120000) {
            return Err(link_error(name, &raw));
        }
        if entry.is_dir() {
            fs::create_dir_all(dest.join(&rel)).map_err(|e| OpError::io(&dest.join(&rel), e))?;
        } else {
            write_entry(dest, &rel, entry)?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(path_bytes: &[u8], data: &[u8]) -> Vec<u8> {
        // Hand-built header so that unsafe names can be written at all.
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..path_bytes.len()].copy_from_slice(path_bytes);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn extracts_plain_tar() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.tar");
        fs::write(&a, tar_with(b"dir/x.txt", b"hi")).unwrap();
        assert_eq!(
            extract(&a, ArchiveFormat::Tar, &d.path().join("out")).unwrap(),
            1
        );
        assert_eq!(fs::read(d.path().join("out/dir/x.txt")).unwrap(), b"hi");
    }

    #[test]
    fn rejects_path_traversal_in_tar() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("evil.tar");
        fs::write(&a, tar_with(b"../../escape.txt", b"pwned")).unwrap();
        let e = extract(&a, ArchiveFormat::Tar, &d.path().join("out")).unwrap_err();
        assert!(e.to_string().contains("unsafe path"), "{e}");
        assert!(!d.path().join("escape.txt").exists());
    }

    #[test]
    fn rejects_symlinks_in_tar() {
        let d = tempfile::tempdir().unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        let mut b = tar::Builder::new(Vec::new());
        b.append_link(&mut h, "link", "/etc/passwd").unwrap();
        let a = d.path().join("l.tar");
        fs::write(&a, b.into_inner().unwrap()).unwrap();
        assert!(
            extract(&a, ArchiveFormat::Tar, &d.path().join("out"))
                .unwrap_err()
                .to_string()
                .contains("link")
        );
    }

    #[test]
    fn rejects_zip_traversal() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("evil.zip");
        let mut w = zip::ZipWriter::new(fs::File::create(&a).unwrap());
        w.start_file("../evil.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        io::Write::write_all(&mut w, b"x").unwrap();
        w.finish().unwrap();
        assert!(extract(&a, ArchiveFormat::Zip, &d.path().join("out")).is_err());
        assert!(!d.path().join("evil.txt").exists());
    }

    #[test]
    fn format_from_name() {
        assert_eq!(
            ArchiveFormat::from_name("https://x/y.tar.gz?dl=1"),
            Some(ArchiveFormat::TarGz)
        );
        assert_eq!(ArchiveFormat::from_name("a.zip"), Some(ArchiveFormat::Zip));
        assert_eq!(ArchiveFormat::from_name("a.jsonl"), None);
    }
}

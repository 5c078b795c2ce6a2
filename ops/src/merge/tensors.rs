//! Safetensors files as merge inputs and outputs: a memory-mapped reader that hands out one tensor
//! at a time as `f32` (F32, F16 and BF16 on disk), a streaming writer that lays out the header
//! first and then appends tensors in order, and the in-memory [`StateDict`] used by the layer-wise
//! techniques and the evolution loop. Streaming keeps a file merge's peak memory near the size of
//! its inputs: only the tensor being merged is ever materialised.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use half::{bf16, f16};
use rayon::prelude::*;
use serde_json::{Value, json};

/// What went wrong reading or writing a safetensors file.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    #[error("I/O error on `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is not a safetensors file: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{0}")]
    Mismatch(String),
}

impl TensorFileError {
    /// Maps an I/O error on `path`.
    fn io(path: &Path) -> impl Fn(std::io::Error) -> Self + Copy + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// On-disk element types forge reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(Self::F32),
            "F16" => Some(Self::F16),
            "BF16" => Some(Self::BF16),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
        }
    }
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
    /// The values of little-endian `bytes`, decoded in chunks on rayon's threads (a large
    /// tensor's page faults, when `bytes` is mapped, are taken in parallel too).
    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        use super::CHUNK;
        let size = self.size();
        let mut out = vec![0f32; bytes.len() / size];
        out.par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK * size))
            .for_each(|(out, bytes)| {
                let each = out.iter_mut().zip(bytes.chunks_exact(size));
                match self {
                    Self::F32 => each.for_each(|(o, c)| {
                        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }),
                    Self::F16 => each.for_each(|(o, c)| {
                        *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                    }),
                    Self::BF16 => each.for_each(|(o, c)| {
                        *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
                    }),
                }
            });
        out
    }
    fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        out.reserve(values.len() * self.size());
        for &v in values {
            match self {
                Self::F32 => out.extend_from_slice(&v.to_le_bytes()),
                Self::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                Self::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
            }
        }
    }
}

/// Name, type and shape of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    range: (usize, usize),
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Parse a safetensors buffer's header: where the data starts and each tensor's type, shape and
/// byte range (relative to the data start), checked against the buffer's length.
fn parse_header(
    bytes: &[u8],
    path: &Path,
) -> Result<(usize, BTreeMap<String, TensorInfo>), TensorFileError> {
    let bad = |message: String| TensorFileError::Format {
        path: path.to_owned(),
        message,
    };
    if bytes.len() < 8 {
        return Err(bad("shorter than its 8-byte header length".into()));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = bytes
        .get(8..8usize.saturating_add(n))
        .ok_or_else(|| bad(format!("header length {n} runs past the end")))?;
    let parsed: BTreeMap<String, Value> =
        serde_json::from_slice(header).map_err(|e| bad(format!("header: {e}")))?;
    let data_len = bytes.len() - 8 - n;
    let mut tensors = BTreeMap::new();
    for (name, v) in parsed {
        if name == "__metadata__" {
            continue;
        }
        let dtype_name = v["dtype"].as_str().unwrap_or("?");
        let dtype = DType::parse(dtype_name).ok_or_else(|| {
            bad(format!(
                "tensor `{name}` has dtype {dtype_name}; forge merges F32, F16 and BF16"
            ))
        })?;
        let shape: Vec<usize> = serde_json::from_value(v["shape"].clone())
            .map_err(|e| bad(format!("tensor `{name}` shape: {e}")))?;
        let offs: [usize; 2] = serde_json::from_value(v["data_offsets"].clone())
            .map_err(|e| bad(format!("tensor `{name}` data_offsets: {e}")))?;
        let numel: usize = shape.iter().product();
        if offs[1] < offs[0] || offs[1] > data_len || offs[1] - offs[0] != numel * dtype.size() {
            return Err(bad(format!("tensor `{name}` has inconsistent offsets")));
        }
        tensors.insert(
            name,
            TensorInfo {
                dtype,
                shape,
                range: (offs[0], offs[1]),
            },
        );
    }
    Ok((8 + n, tensors))
}

/// The length prefix and canonical header (keys sorted, padded to 8 bytes) of a file holding
/// these tensors back to back in this order, and the length of the data that follows.
fn header_bytes<'a>(
    entries: impl Iterator<Item = (&'a String, DType, &'a [usize])>,
) -> (Vec<u8>, usize) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape) in entries {
        let len = shape.iter().product::<usize>() * dtype.size();
        header.insert(
            name.clone(),
            json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    // serde_json's Map is sorted (no preserve_order), and values here hold no floats.
    let mut text = serde_json::to_string(&Value::Object(header)).expect("header");
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    (out, offset)
}

/// A memory-mapped safetensors file.
pub struct TensorFile {
    path: PathBuf,
    map: memmap2::Mmap,
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self, TensorFileError> {
        let io = TensorFileError::io(path);
        let file = File::open(path).map_err(io)?;
        let map = crate::sys::map_readonly(&file).map_err(io)?;
        let (data_start, tensors) = parse_header(&map, path)?;
        Ok(Self {
            path: path.to_owned(),
            map,
            data_start,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }
    /// One tensor's values as `f32`.
    pub fn read(&self, name: &str) -> Option<Vec<f32>> {
        let info = self.tensors.get(name)?;
        let (start, end) = (
            self.data_start + info.range.0,
            self.data_start + info.range.1,
        );
        let values = info.dtype.decode(&self.map[start..end]);
        // The bytes are copied out: let the kernel drop their pages from this process's resident
        // set, so a streaming merge holds about one tensor per input, not whole files.
        if end > start {
            crate::sys::drop_pages(&self.map, start, end - start);
        }
        Some(values)
    }
    /// The whole file in memory.
    pub fn load(&self) -> StateDict {
        StateDict {
            tensors: self
                .tensors
                .iter()
                .map(|(k, info)| {
                    (
                        k.clone(),
                        Tensor {
                            shape: info.shape.clone(),
                            data: self.read(k).expect("listed"),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// Writes a safetensors file tensor by tensor: the header (keys sorted, canonical JSON, padded to
/// 8 bytes) is fixed up front from the names, types and shapes, so the same tensors always give
/// the same bytes. A writer thread does the I/O while the caller computes the next tensor: it
/// appends, hashes what it appends (blake3, the store's object digest, so the store need not read
/// the file again: [`forge_cache::hashing::remember_written`]) and asks the kernel to start
/// writing back every [`WRITEBACK_BYTES`], so the fsync in [`finish`](Self::finish) has little
/// left to wait for.
pub struct TensorWriter {
    path: PathBuf,
    order: Vec<(String, DType, usize)>,
    next: usize,
    /// Chunks for the writer thread; at most two wait, so memory stays near one tensor's size.
    tx: Option<SyncSender<Chunk>>,
    thread: Option<JoinHandle<std::io::Result<(File, blake3::Hasher)>>>,
}

/// Written back to disk (asynchronously) each time this much more is appended.
pub const WRITEBACK_BYTES: u64 = 64 << 20;

/// What the writer thread appends: bytes, or F32 values written as their little-endian bytes
/// without another copy.
enum Chunk {
    Bytes(Vec<u8>),
    F32(Vec<f32>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Bytes(b) => b,
            Self::F32(v) => bytemuck::cast_slice(v),
        }
    }
}

/// The writer thread: append every chunk, hash it, start write-back as it goes.
fn append_all(mut file: File, rx: Receiver<Chunk>) -> std::io::Result<(File, blake3::Hasher)> {
    let mut hasher = blake3::Hasher::new();
    let (mut written, mut flushed) = (0u64, 0u64);
    for chunk in rx {
        let bytes = chunk.bytes();
        file.write_all(bytes)?;
        hasher.update(bytes);
        written += bytes.len() as u64;
        if written - flushed >= WRITEBACK_BYTES {
            crate::sys::start_writeback(&file, flushed, written - flushed);
            flushed = written;
        }
    }
    Ok((file, hasher))
}

impl TensorWriter {
    pub fn create(
        path: &Path,
        layout: &BTreeMap<String, (DType, Vec<usize>)>,
    ) -> Result<Self, TensorFileError> {
        let (header, _) = header_bytes(
            layout
                .iter()
                .map(|(name, (dtype, shape))| (name, *dtype, shape.as_slice())),
        );
        let order = layout
            .iter()
            .map(|(name, (dtype, shape))| (name.clone(), *dtype, shape.iter().product()))
            .collect();
        let file = File::create(path).map_err(TensorFileError::io(path))?;
        let (tx, rx) = sync_channel(2);
        let thread = std::thread::Builder::new()
            .name("tensor-writer".into())
            .spawn(move || append_all(file, rx))
            .map_err(TensorFileError::io(path))?;
        let mut w = Self {
            path: path.to_owned(),
            order,
            next: 0,
            tx: Some(tx),
            thread: Some(thread),
        };
        w.send(Chunk::Bytes(header))?;
        Ok(w)
    }

    /// Append the next tensor; names must come in sorted order, as laid out.
    pub fn write(&mut self, name: &str, values: Vec<f32>) -> Result<(), TensorFileError> {
        let Some((expect, dtype, numel)) = self.order.get(self.next) else {
            return Err(TensorFileError::Mismatch(format!(
                "tensor `{name}` written past the end of the layout"
            )));
        };
        if expect != name || *numel != values.len() {
            return Err(TensorFileError::Mismatch(format!(
                "expected tensor `{expect}` ({numel} values), got `{name}` ({} values)",
                values.len()
            )));
        }
        let chunk = if *dtype == DType::F32 && cfg!(target_endian = "little") {
            Chunk::F32(values)
        } else {
            let mut bytes = Vec::new();
            dtype.encode(&values, &mut bytes);
            Chunk::Bytes(bytes)
        };
        self.send(chunk)?;
        self.next += 1;
        Ok(())
    }

    fn send(&mut self, chunk: Chunk) -> Result<(), TensorFileError> {
        let sent = self.tx.as_ref().expect("open until finish").send(chunk);
        if sent.is_err() {
            // The writer thread stopped: its error says why.
            return self.join().map(|_| ());
        }
        Ok(())
    }

    /// Stop the writer thread (after what was sent) and take its file and hasher.
    fn join(&mut self) -> Result<(File, blake3::Hasher), TensorFileError> {
        self.tx = None;
        let done = self.thread.take().map(JoinHandle::join);
        let io = TensorFileError::io(&self.path);
        match done {
            Some(Ok(done)) => done.map_err(io),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Err(io(std::io::Error::other("the writer already stopped"))),
        }
    }

    /// Wait for every tensor to be written, fsync, and return the file's blake3 digest (also
    /// remembered for the store, see [`forge_cache::hashing::remember_written`]).
    pub fn finish(mut self) -> Result<forge_cache::ObjectDigest, TensorFileError> {
        if self.next != self.order.len() {
            return Err(TensorFileError::Mismatch(format!(
                "{} of {} tensors written",
                self.next,
                self.order.len()
            )));
        }
        let (file, hasher) = self.join()?;
        let io = TensorFileError::io(&self.path);
        file.sync_all().map_err(io)?;
        drop(file);
        let digest = forge_cache::ObjectDigest::from_bytes(*hasher.finalize().as_bytes());
        forge_cache::hashing::remember_written(&self.path, digest)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        Ok(digest)
    }
}

impl Drop for TensorWriter {
    /// An unfinished writer (an error, a cancelled merge) still stops its thread before it goes.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One tensor in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A whole model in memory, by tensor name (sorted).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StateDict {
    pub tensors: BTreeMap<String, Tensor>,
}

impl StateDict {
    /// One model from several of the same layout, tensor by tensor: `f(name, [each model's
    /// values])` gives the new values.
    pub fn zip_map(
        models: &[&StateDict],
        f: impl Fn(&str, &[&[f32]]) -> Vec<f32>,
    ) -> Result<StateDict, String> {
        let first = models[0];
        if let Some(i) = models.iter().position(|m| !m.same_layout(first)) {
            return Err(format!(
                "model {i} does not have the same tensor names and shapes as model 0"
            ));
        }
        let tensors = first
            .tensors
            .iter()
            .map(|(name, t)| {
                let inputs: Vec<&[f32]> = models
                    .iter()
                    .map(|m| m.tensors[name].data.as_slice())
                    .collect();
                (
                    name.clone(),
                    Tensor {
                        shape: t.shape.clone(),
                        data: f(name, &inputs),
                    },
                )
            })
            .collect();
        Ok(StateDict { tensors })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TensorFileError> {
        let (data_start, infos) = parse_header(bytes, Path::new("<memory>"))?;
        let tensors = infos
            .into_iter()
            .map(|(name, info)| {
                let (a, b) = (data_start + info.range.0, data_start + info.range.1);
                let data = info.dtype.decode(&bytes[a..b]);
                let shape = info.shape;
                (name, Tensor { shape, data })
            })
            .collect();
        Ok(Self { tensors })
    }

    /// Canonical F32 safetensors bytes (sorted keys, no metadata).
    pub fn to_bytes(&self) -> Vec<u8> {
        let (mut out, len) = header_bytes(
            self.tensors
                .iter()
                .map(|(name, t)| (name, DType::F32, t.shape.as_slice())),
        );
        out.reserve(len);
        for t in self.tensors.values() {
            DType::F32.encode(&t.data, &mut out);
        }
        out
    }

    pub fn numel(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// Same names and shapes as `other`.
    pub fn same_layout(&self, other: &StateDict) -> bool {
        self.tensors.len() == other.tensors.len()
            && self
                .tensors
                .iter()
                .zip(&other.tensors)
                .all(|((a, x), (b, y))| a == b && x.shape == y.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_round_trip_every_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mut layout = BTreeMap::new();
        layout.insert("a".to_string(), (DType::F32, vec![2, 2]));
        layout.insert("b".to_string(), (DType::BF16, vec![3]));
        layout.insert("c".to_string(), (DType::F16, vec![1]));
        let mut w = TensorWriter::create(&path, &layout).unwrap();
        w.write("a", vec![1.0, -2.0, 3.5, 0.25]).unwrap();
        assert!(w.write("c", vec![1.0]).is_err(), "order is enforced");
        w.write("b", vec![1.0, 0.5, -4.0]).unwrap();
        w.write("c", vec![0.125]).unwrap();
        let digest = w.finish().unwrap();
        // The digest hashed while writing is the file's.
        assert_eq!(digest, forge_cache::hash_file_uncached(&path).unwrap());
        let f = TensorFile::open(&path).unwrap();
        assert_eq!(f.read("a").unwrap(), vec![1.0, -2.0, 3.5, 0.25]);
        assert_eq!(f.read("b").unwrap(), vec![1.0, 0.5, -4.0]);
        assert_eq!(f.read("c").unwrap(), vec![0.125]);
        // The same file through the safetensors crate, and the in-memory form.
        let bytes = std::fs::read(&path).unwrap();
        let sd = StateDict::from_bytes(&bytes).unwrap();
        assert_eq!(sd.tensors["b"].shape, vec![3]);
        assert_eq!(sd, f.load());
        let again = StateDict::from_bytes(&sd.to_bytes()).unwrap();
        assert_eq!(again, sd);
    }

    #[test]
    fn a_file_larger_than_the_write_back_step_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.safetensors");
        // Three tensors of 24 MiB: write-back starts on the way (at 64 MiB), and the rest at the end.
        let n = 6 << 20;
        let mut layout = BTreeMap::new();
        for name in ["x", "y", "z"] {
            layout.insert(name.to_string(), (DType::F32, vec![n]));
        }
        let mut w = TensorWriter::create(&path, &layout).unwrap();
        for (i, name) in ["x", "y", "z"].iter().enumerate() {
            w.write(name, (0..n).map(|j| (i * n + j) as f32).collect())
                .unwrap();
        }
        let digest = w.finish().unwrap();
        assert_eq!(digest, forge_cache::hash_file_uncached(&path).unwrap());
        let f = TensorFile::open(&path).unwrap();
        let z = f.read("z").unwrap();
        assert_eq!((z[0], z[n - 1]), ((2 * n) as f32, (3 * n - 1) as f32));
    }

    #[test]
    fn a_writer_dropped_unfinished_stops_its_thread_and_finish_counts_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part.safetensors");
        let mut layout = BTreeMap::new();
        layout.insert("a".to_string(), (DType::F32, vec![2]));
        layout.insert("b".to_string(), (DType::F32, vec![2]));
        let mut w = TensorWriter::create(&path, &layout).unwrap();
        w.write("a", vec![1.0, 2.0]).unwrap();
        drop(w);
        let mut w = TensorWriter::create(&path, &layout).unwrap();
        w.write("a", vec![1.0, 2.0]).unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("1 of 2 tensors"), "{e}");
    }
}

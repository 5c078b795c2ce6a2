//! Per-step locks, so that concurrent `forge apply` processes on one store run each step once.
//!
//! A lock is an OS advisory lock (`flock`) on `locks/<key>.lock`. The kernel drops it when the
//! holding process dies, however it dies, so a crashed run can never wedge the store: the next
//! process simply takes the lock (a *stale-lock reclaim*; the dead holder's pid, which every
//! holder writes into the file, is reported). A live holder is waited for, polling, until a
//! timeout; the error then names its pid.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "timed out after {waited:?} waiting for lock `{}`{}",
        path.display(),
        holder.map(|p| format!(" held by pid {p}")).unwrap_or_default()
    )]
    Timeout {
        path: PathBuf,
        waited: Duration,
        holder: Option<u32>,
    },
    #[error("cancelled while waiting for lock `{}`", path.display())]
    Cancelled { path: PathBuf },
    #[error("lock `{}` is held by pid {holder}", path.display())]
    Busy { path: PathBuf, holder: u32 },
    #[error("I/O error on lock `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long to wait for a lock.
#[derive(Debug, Clone, Copy)]
pub struct LockOptions {
    pub timeout: Duration,
    pub poll: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(24 * 3600),
            poll: Duration::from_millis(50),
        }
    }
}

/// What happened while acquiring, for the caller's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lock was free.
    Free,
    /// The lock file named a process that no longer runs; its lock was reclaimed.
    Reclaimed { dead_pid: u32 },
    /// Another live process held it; we waited.
    AfterWait { holder: u32 },
}

/// A held lock; released on drop (the file stays, empty of meaning until the next holder).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
    pub acquired: Acquired,
}

impl FileLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut s).ok()?;
    s.lines().next()?.trim().strip_prefix("pid ")?.parse().ok()
}

/// True when a process with this pid exists (it may belong to another user).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // Signal 0 only checks for existence and permission.
    let r = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None);
    let exists = matches!(r, Ok(()) | Err(nix::errno::Errno::EPERM));
    // A zombie (exited, not yet reaped by its parent) still exists but holds nothing.
    exists && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    // /proc/<pid>/stat is "pid (comm) state …"; comm may contain spaces, so split after ')'.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Take an exclusive lock on `path`, waiting up to `opts.timeout`. `cancelled` is polled while
/// waiting so Ctrl-C interrupts the wait; `on_wait` is told the holder's pid once, when the wait
/// begins.
pub fn lock_exclusive(
    path: &Path,
    opts: LockOptions,
    cancelled: &dyn Fn() -> bool,
    on_wait: &dyn Fn(Option<u32>),
) -> Result<FileLock, LockError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(path))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))?;
    let start = Instant::now();
    let mut waited_on = None;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = read_pid(&mut file);
                if waited_on.is_none() {
                    on_wait(holder);
                }
                waited_on = waited_on.or(holder).or(Some(0));
                if cancelled() {
                    return Err(LockError::Cancelled {
                        path: path.to_owned(),
                    });
                }
                if start.elapsed() >= opts.timeout {
                    return Err(LockError::Timeout {
                        path: path.to_owned(),
                        waited: start.elapsed(),
                        holder,
                    });
                }
                std::thread::sleep(opts.poll);
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(path)(e)),
        }
    }
    let previous = read_pid(&mut file);
    let acquired = match (waited_on, previous) {
        (Some(holder), _) => Acquired::AfterWait { holder },
        (None, Some(pid)) if pid != std::process::id() && !pid_alive(pid) => {
            Acquired::Reclaimed { dead_pid: pid }
        }
        _ => Acquired::Free,
    };
    file.set_len(0).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    writeln!(file, "pid {}", std::process::id()).map_err(io_err(path))?;
    file.flush().map_err(io_err(path))?;
    Ok(FileLock {
        file,
        path: path.to_owned(),
        acquired,
    })
}

/// A shared lock on the whole store, held by every `apply`; `gc` and `verify` take it exclusively
/// so they never delete or move objects a running apply is using.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

pub fn lock_store(path: &Path, exclusive: bool) -> Result<StoreLock, LockError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(path))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))?;
    let r = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match r {
        Ok(()) => Ok(StoreLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => {
            if exclusive {
                Err(LockError::Busy {
                    path: path.to_owned(),
                    holder: 0,
                })
            } else {
                // Someone runs gc/verify: wait for it rather than fail.
                if exclusive {
                    file.lock()
                } else {
                    file.lock_shared()
                }
                .map_err(io_err(path))?;
                Ok(StoreLock { _file: file })
            }
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_locker_times_out_naming_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lock");
        let held = lock_exclusive(&p, LockOptions::default(), &|| false, &|_| {}).unwrap();
        assert_eq!(held.acquired, Acquired::Free);
        let opts = LockOptions {
            timeout: Duration::from_millis(120),
            poll: Duration::from_millis(10),
        };
        let err = lock_exclusive(&p, opts, &|| false, &|_| {}).unwrap_err();
        match err {
            LockError::Timeout { holder, .. } => assert_eq!(holder, Some(std::process::id())),
            other => panic!("unexpected {other:?}"),
        }
        drop(held);
        lock_exclusive(&p, opts, &|| false, &|_| {}).unwrap();
    }

    #[test]
    fn lock_file_of_dead_pid_is_reclaimed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lock");
        // A process that has exited: its pid no longer exists (we waited on it).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        std::fs::write(&p, format!("pid {pid}\n")).unwrap();
        let l = lock_exclusive(&p, LockOptions::default(), &|| false, &|_| {}).unwrap();
        assert_eq!(l.acquired, Acquired::Reclaimed { dead_pid: pid });
    }

    #[test]
    fn cancel_interrupts_wait() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lock");
        let _held = lock_exclusive(&p, LockOptions::default(), &|| false, &|_| {}).unwrap();
        let err = lock_exclusive(&p, LockOptions::default(), &|| true, &|_| {}).unwrap_err();
        assert!(matches!(err, LockError::Cancelled { .. }));
    }
}

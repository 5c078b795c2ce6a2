//! Per-step locks, so that concurrent `forge apply` processes — on one host or on several hosts
//! sharing the store — run each step once; and the store-wide lock that keeps `gc`/`verify` away
//! from running applies.
//!
//! # Step locks are leases
//!
//! A step lock is a small record file, `locks/<key>.lease`, naming its holder: host, boot id,
//! pid, the process's start time, a random token, a lease length and a heartbeat counter. The
//! holder renews it (a *beat*) every quarter lease from a background thread. Another process
//! reclaims it only when the holder is
//!
//! - **provably dead on this host**: same host name and boot id, and the pid is gone, a zombie,
//!   or now belongs to a process that started later (pid reuse); or the host has rebooted since
//!   (same host, other boot id) — reclaimed at once; or
//! - **silent for a whole lease**: the record's beat has not changed for the holder's lease as
//!   timed by the waiter's own monotonic clock, or its wall-clock age exceeds two leases (so a
//!   clock skew of up to a lease never reclaims early). A holder on another host is never
//!   reclaimed before its lease has run out.
//!
//! A holder checks at every beat that the record is still its own; if it is not (it was silent
//! for a lease — stopped, suspended, cut off — and another process took the step over), the
//! lock reports itself [`FileLock::lost`] and the executor does not record that run.
//!
//! The host name is the kernel's (`/proc/sys/kernel/hostname`); `FORGE_HOST_ID` overrides it
//! (tests use it to play two hosts on one machine). The lease is `FORGE_LOCK_LEASE_MS`
//! milliseconds (default 30 s).
//!
//! # What the store asks of a shared filesystem
//!
//! A record becomes visible whole: it is written to a private temporary file and published with
//! `link(2)`, which fails if the lock exists — atomic on local filesystems and on NFS v2–v4 (the
//! classic NFS-safe lock-file method: when a lost reply makes `link` report an error, a link
//! count of 2 on the temporary file says it did succeed). Beats and reclaims use `rename(2)`,
//! atomic within one directory on NFS too. Nothing relies on `O_EXCL` (unsafe on NFSv2), on
//! `flock` reaching other clients for step locks, or on clocks agreeing to better than a lease.
//! The filesystem must give close-to-open consistency (NFS's default; do not mount with
//! `nocto`), and attribute caching only delays what a waiter sees by the cache time, which is
//! far below a lease.
//!
//! The store lock is an OS advisory lock (`flock`): shared for `apply`, exclusive for `gc` and
//! `verify`. The kernel drops it when its holder dies however it dies. On NFS, Linux maps
//! `flock` onto NFS byte-range locks, so it reaches every client through the server's lock
//! manager (NFSv4, or v3 with `lockd`); do not mount with `nolock`/`local_lock`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "timed out after {waited:?} waiting for lock `{}`{}",
        path.display(),
        holder.as_ref().map(|h| format!(" held by {h}")).unwrap_or_default()
    )]
    Timeout {
        path: PathBuf,
        waited: Duration,
        holder: Option<Holder>,
    },
    #[error("cancelled while waiting for lock `{}`", path.display())]
    Cancelled { path: PathBuf },
    #[error("lock `{}` is held by another process", path.display())]
    Busy { path: PathBuf },
    #[error("I/O error on lock `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long to wait for a lock, how often to look, and the lease a holder promises to renew.
#[derive(Debug, Clone, Copy)]
pub struct LockOptions {
    pub timeout: Duration,
    pub poll: Duration,
    pub lease: Duration,
}

impl LockOptions {
    /// `FORGE_LOCK_LEASE_MS`, else 30 s.
    pub fn default_lease() -> Duration {
        std::env::var("FORGE_LOCK_LEASE_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map_or(Duration::from_secs(30), Duration::from_millis)
    }
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(24 * 3600),
            poll: Duration::from_millis(50),
            lease: Self::default_lease(),
        }
    }
}

/// Who holds (or held) a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on {}", self.pid, self.host)
    }
}

/// Why a held lock was taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// The holder ran on this host and is gone (or the host rebooted since).
    Dead,
    /// The holder did not renew its lease in time (another host, or a stopped process).
    LeaseExpired,
}

impl Reclaim {
    pub fn as_str(self) -> &'static str {
        match self {
            Reclaim::Dead => "dead",
            Reclaim::LeaseExpired => "lease-expired",
        }
    }
}

/// What happened while acquiring, for the caller's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The lock was free.
    Free,
    /// Its holder was dead or silent for a lease; the lock was taken over.
    Reclaimed { holder: Holder, why: Reclaim },
    /// Another live process held it; we waited until it let go.
    AfterWait { holder: Holder },
}

/// This process as a lock holder.
struct Me {
    host: String,
    boot: String,
    pid: u32,
    start: Option<u64>,
}

fn me() -> &'static Me {
    static ME: OnceLock<Me> = OnceLock::new();
    ME.get_or_init(|| {
        let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
        let host = std::env::var("FORGE_HOST_ID")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .or_else(|| read("/proc/sys/kernel/hostname"))
            .unwrap_or_else(|| "localhost".into());
        let pid = std::process::id();
        Me {
            host: host.split_whitespace().collect::<Vec<_>>().join("_"),
            boot: read("/proc/sys/kernel/random/boot_id").unwrap_or_else(|| "unknown".into()),
            pid,
            start: process_start(pid),
        }
    })
}

/// A token no other holder has: this host, pid and a per-process counter, hashed with the time.
fn new_token() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let m = me();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let h = blake3::hash(format!("{}\n{}\n{}\n{n}\n{nanos}", m.host, m.boot, m.pid).as_bytes());
    h.to_hex()[..24].to_owned()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The lock file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Holder,
    boot: String,
    start: Option<u64>,
    token: String,
    lease_ms: u64,
    beat: u64,
    renewed_ms: u64,
}

impl Record {
    fn mine(lease: Duration) -> Record {
        let m = me();
        Record {
            holder: Holder {
                host: m.host.clone(),
                pid: m.pid,
            },
            boot: m.boot.clone(),
            start: m.start,
            token: new_token(),
            lease_ms: lease.as_millis().max(1) as u64,
            beat: 0,
            renewed_ms: now_ms(),
        }
    }

    fn render(&self) -> String {
        format!(
            "pid {}\nhost {}\nboot {}\nstart {}\ntoken {}\nlease_ms {}\nbeat {}\nrenewed_ms {}\n",
            self.holder.pid,
            self.holder.host,
            self.boot,
            self.start.map_or("-".into(), |s| s.to_string()),
            self.token,
            self.lease_ms,
            self.beat,
            self.renewed_ms
        )
    }

    fn parse(text: &str) -> Option<Record> {
        let mut f = std::collections::HashMap::new();
        for line in text.lines() {
            let (k, v) = line.split_once(' ')?;
            f.insert(k, v.trim());
        }
        Some(Record {
            holder: Holder {
                host: f.get("host")?.to_string(),
                pid: f.get("pid")?.parse().ok()?,
            },
            boot: f.get("boot")?.to_string(),
            start: f.get("start")?.parse().ok(),
            token: f.get("token")?.to_string(),
            lease_ms: f.get("lease_ms")?.parse().ok()?,
            beat: f.get("beat")?.parse().ok()?,
            renewed_ms: f.get("renewed_ms")?.parse().ok()?,
        })
    }
}

/// What is at the lock's path now.
enum Seen {
    Gone,
    /// Present but not a record this version writes (a foreign or damaged file): treated like a
    /// silent holder, reclaimed after the default lease.
    Unreadable(String),
    Held(Record),
}

fn look(path: &Path) -> std::io::Result<Seen> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(match Record::parse(&text) {
            Some(rec) => Seen::Held(rec),
            None => Seen::Unreadable(text),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Seen::Gone),
        Err(e) => Err(e),
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Publish `rec` at `path` if nothing is there: write a private file, `link` it into place.
fn try_create(path: &Path, rec: &Record) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let tmp = sibling(path, &format!(".{}.new", rec.token));
    std::fs::write(&tmp, rec.render())?;
    let linked = match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        // NFS: the link may have been made though its reply was lost.
        Err(e) => match std::fs::metadata(&tmp) {
            Ok(m) if m.nlink() == 2 => Ok(true),
            _ => Err(e),
        },
    };
    let _ = std::fs::remove_file(&tmp);
    linked
}

/// Write `rec` over `path` atomically (a beat).
fn replace(path: &Path, rec: &Record) -> std::io::Result<()> {
    let tmp = sibling(path, &format!(".{}.beat", rec.token));
    std::fs::write(&tmp, rec.render())?;
    std::fs::rename(&tmp, path)
}

/// Take the stale lock whose content was `stale` (its text) out of the way. Only one of several
/// reclaimers can move a given file; if what was moved is not the stale record (it was reclaimed
/// and re-taken in between), it is put back.
fn remove_stale(path: &Path, stale: &str) -> std::io::Result<bool> {
    let aside = sibling(path, &format!(".{}.stale", new_token()));
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let moved = std::fs::read_to_string(&aside).unwrap_or_default();
    let ours = moved == stale;
    if !ours {
        // Someone's live lock: restore it unless yet another holder has appeared (that holder's
        // beat then tells the other one it lost the lock).
        let _ = std::fs::hard_link(&aside, path);
    }
    let _ = std::fs::remove_file(&aside);
    Ok(ours)
}

/// The start time of a process, in clock ticks since boot (`/proc/<pid>/stat` field 22).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state …": comm may contain spaces, so split after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
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
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Is the holder of `rec` provably gone from this host?
fn dead_here(rec: &Record) -> bool {
    let m = me();
    if rec.holder.host != m.host {
        return false;
    }
    if rec.boot != m.boot {
        return true;
    }
    !pid_alive(rec.holder.pid)
        || (rec.start.is_some() && process_start(rec.holder.pid) != rec.start)
}

/// Times a holder's silence on the waiter's own clock.
#[derive(Default)]
struct Silence {
    last: Option<(String, Instant)>,
}

impl Silence {
    /// How long the file has shown exactly `text`.
    fn unchanged_for(&mut self, text: &str) -> Duration {
        match &self.last {
            Some((t, since)) if t == text => since.elapsed(),
            _ => {
                self.last = Some((text.to_owned(), Instant::now()));
                Duration::ZERO
            }
        }
    }
}

/// A held step lock; released on drop. A heartbeat thread renews its lease while it lives.
#[derive(Debug)]
pub struct FileLock {
    path: PathBuf,
    token: String,
    lost: Arc<AtomicBool>,
    beat: Option<Beat>,
    pub acquired: Acquired,
}

impl FileLock {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True once a beat found the record no longer ours: another process took the step over
    /// after this one was silent for a whole lease.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.beat.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        if let Ok(Seen::Held(rec)) = look(&self.path)
            && rec.token == self.token
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

type Beat = (mpsc::Sender<()>, std::thread::JoinHandle<()>);

/// Renew `rec` every quarter lease until told to stop (or until it is found lost).
fn heartbeat(path: PathBuf, mut rec: Record, lost: Arc<AtomicBool>) -> std::io::Result<Beat> {
    let (tx, rx) = mpsc::channel::<()>();
    let every = Duration::from_millis((rec.lease_ms / 4).max(1));
    let thread = std::thread::Builder::new()
        .name("forge-lock-beat".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                let ours = |seen: &std::io::Result<Seen>| {
                    matches!(seen, Ok(Seen::Held(now)) if now.token == rec.token)
                };
                let mut seen = look(&path);
                if !ours(&seen) && seen.is_ok() {
                    // A reclaimer that moved this record aside by mistake puts it back at once:
                    // look again before concluding it is gone.
                    std::thread::sleep(Duration::from_millis(20));
                    seen = look(&path);
                }
                match seen {
                    Ok(Seen::Held(now)) if now.token == rec.token => {}
                    Ok(_) => {
                        lost.store(true, Ordering::SeqCst);
                        tracing::warn!(lock = %path.display(), "lost a step lock: another process took it over");
                        return;
                    }
                    // A transient read error: try again at the next beat.
                    Err(_) => continue,
                }
                rec.beat += 1;
                rec.renewed_ms = now_ms();
                if let Err(e) = replace(&path, &rec) {
                    tracing::warn!(lock = %path.display(), error = %e, "could not renew a step lock");
                }
            }
        });
    Ok((tx, thread?))
}

/// Take an exclusive step lock on `path`, waiting up to `opts.timeout`. `cancelled` is polled
/// while waiting and ends the wait with [`LockError::Cancelled`] when it says so: Ctrl-C, or the
/// caller seeing that the holder has finished the work (so that many waiters do not queue up
/// for a lock they no longer need). `on_wait` is told the holder once, when the wait begins
/// (`None` when the file there is not a lock record).
///
/// A waiter only reads the record while it is there; it tries to publish its own only once the
/// path is free, so waiting costs one small read per poll.
pub fn lock_exclusive(
    path: &Path,
    opts: LockOptions,
    cancelled: &dyn Fn() -> bool,
    on_wait: &dyn Fn(Option<&Holder>),
) -> Result<FileLock, LockError> {
    let io = |source| LockError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mine = Record::mine(opts.lease);
    let start = Instant::now();
    let mut waited_on: Option<Holder> = None;
    let mut waiting = false;
    let mut reclaimed = None;
    let mut silence = Silence::default();
    loop {
        let seen = look(path).map_err(io)?;
        if matches!(seen, Seen::Gone) {
            if try_create(path, &mine).map_err(io)? {
                break;
            }
            continue;
        }
        let (text, holder, stale) = match seen {
            Seen::Gone => continue,
            Seen::Unreadable(text) => {
                let quiet = silence.unchanged_for(&text);
                (
                    text,
                    None,
                    (quiet >= LockOptions::default_lease()).then_some(Reclaim::LeaseExpired),
                )
            }
            Seen::Held(rec) => {
                let text = rec.render();
                let quiet = silence.unchanged_for(&text);
                let lease = Duration::from_millis(rec.lease_ms);
                let age = Duration::from_millis(now_ms().saturating_sub(rec.renewed_ms));
                let stale = if dead_here(&rec) {
                    Some(Reclaim::Dead)
                } else if quiet >= lease || age > 2 * lease {
                    Some(Reclaim::LeaseExpired)
                } else {
                    None
                };
                (text, Some(rec.holder), stale)
            }
        };
        if let Some(why) = stale {
            if remove_stale(path, &text).map_err(io)? {
                reclaimed = Some((holder, why));
            }
            continue;
        }
        if !waiting {
            on_wait(holder.as_ref());
            waiting = true;
        }
        if holder.is_some() {
            waited_on = holder.clone();
        }
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
    let unknown = || Holder {
        host: "?".into(),
        pid: 0,
    };
    let acquired = match (reclaimed, waited_on) {
        (Some((holder, why)), _) => Acquired::Reclaimed {
            holder: holder.unwrap_or_else(unknown),
            why,
        },
        (None, Some(holder)) => Acquired::AfterWait { holder },
        (None, None) if waiting => Acquired::AfterWait { holder: unknown() },
        (None, None) => Acquired::Free,
    };
    let lost = Arc::new(AtomicBool::new(false));
    let beat = heartbeat(path.to_owned(), mine.clone(), lost.clone()).map_err(io)?;
    Ok(FileLock {
        path: path.to_owned(),
        token: mine.token,
        lost,
        beat: Some(beat),
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
    let io = |source| LockError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    let r = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match r {
        Ok(()) => Ok(StoreLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) if exclusive => Err(LockError::Busy {
            path: path.to_owned(),
        }),
        Err(std::fs::TryLockError::WouldBlock) => {
            // Someone runs gc/verify: wait for it rather than fail.
            file.lock_shared().map_err(io)?;
            Ok(StoreLock { _file: file })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(timeout_ms: u64, lease_ms: u64) -> LockOptions {
        LockOptions {
            timeout: Duration::from_millis(timeout_ms),
            poll: Duration::from_millis(10),
            lease: Duration::from_millis(lease_ms),
        }
    }

    fn take(p: &Path, opts: LockOptions) -> Result<FileLock, LockError> {
        lock_exclusive(p, opts, &|| false, &|_| {})
    }

    #[test]
    fn second_locker_times_out_naming_the_holder_and_gets_it_after_release() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        let held = take(&p, LockOptions::default()).unwrap();
        assert_eq!(held.acquired, Acquired::Free);
        let err = take(&p, quick(120, 30_000)).unwrap_err();
        match err {
            LockError::Timeout { holder, .. } => {
                let h = holder.unwrap();
                assert_eq!((h.pid, h.host), (std::process::id(), me().host.clone()));
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(held);
        assert!(!p.exists(), "release removes the record");
        take(&p, quick(120, 30_000)).unwrap();
        // Nothing but the record was ever left beside it.
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn a_live_holder_renews_its_lease_and_is_never_reclaimed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        // A holder with a 100 ms lease beats every 25 ms; a waiter watching for 4 leases never
        // finds it silent.
        let held = take(&p, quick(1000, 100)).unwrap();
        let first = Record::parse(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let err = take(&p, quick(400, 100)).unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
        let later = Record::parse(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(later.token, first.token);
        assert!(
            later.beat >= first.beat + 8,
            "{} → {}",
            first.beat,
            later.beat
        );
        assert!(!held.lost());
    }

    #[test]
    fn a_record_of_a_dead_process_on_this_host_is_reclaimed_at_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut rec = Record::mine(Duration::from_secs(3600));
        rec.holder.pid = pid;
        rec.start = Some(1);
        std::fs::write(&p, rec.render()).unwrap();
        let t = Instant::now();
        let l = take(&p, LockOptions::default()).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(
            l.acquired,
            Acquired::Reclaimed {
                holder: Holder {
                    host: me().host.clone(),
                    pid
                },
                why: Reclaim::Dead
            }
        );
    }

    #[test]
    fn a_reused_pid_or_a_rebooted_host_does_not_keep_a_lock() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        // Our own pid, but a start time that is not ours: the holder was an earlier process.
        let mut rec = Record::mine(Duration::from_secs(3600));
        rec.start = rec.start.map(|s| s + 1).or(Some(1));
        std::fs::write(&p, rec.render()).unwrap();
        let l = take(&p, LockOptions::default()).unwrap();
        assert!(matches!(
            l.acquired,
            Acquired::Reclaimed {
                why: Reclaim::Dead,
                ..
            }
        ));
        drop(l);
        // Same host, another boot.
        let mut rec = Record::mine(Duration::from_secs(3600));
        rec.boot = "an-earlier-boot".into();
        std::fs::write(&p, rec.render()).unwrap();
        let l = take(&p, LockOptions::default()).unwrap();
        assert!(matches!(
            l.acquired,
            Acquired::Reclaimed {
                why: Reclaim::Dead,
                ..
            }
        ));
    }

    #[test]
    fn another_hosts_silent_record_is_reclaimed_after_its_lease_not_before() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        let mut rec = Record::mine(Duration::from_millis(300));
        rec.holder.host = "elsewhere".into();
        std::fs::write(&p, rec.render()).unwrap();
        // Before its lease has run out (on our clock) it is waited for…
        assert!(matches!(
            take(&p, quick(150, 300)),
            Err(LockError::Timeout { .. })
        ));
        // …and once it has been silent for a lease, taken over.
        let t = Instant::now();
        let l = take(&p, quick(5000, 300)).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(
            l.acquired,
            Acquired::Reclaimed {
                holder: Holder {
                    host: "elsewhere".into(),
                    pid: rec.holder.pid
                },
                why: Reclaim::LeaseExpired
            }
        );
    }

    #[test]
    fn a_holder_whose_record_was_taken_over_knows_it_lost_the_lock() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        let held = take(&p, quick(1000, 80)).unwrap();
        let mut other = Record::mine(Duration::from_secs(60));
        other.holder.host = "elsewhere".into();
        replace(&p, &other).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(held.lost());
        drop(held);
        // Dropping a lost lock leaves the new holder's record alone.
        let left = Record::parse(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(left.token, other.token);
    }

    #[test]
    fn moving_aside_a_record_that_changed_puts_it_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        let old = Record::mine(Duration::from_secs(1));
        let new = Record::mine(Duration::from_secs(1));
        std::fs::write(&p, new.render()).unwrap();
        assert!(!remove_stale(&p, &old.render()).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), new.render());
        assert!(remove_stale(&p, &new.render()).unwrap());
        assert!(!p.exists());
        assert!(!remove_stale(&p, &new.render()).unwrap());
    }

    #[test]
    fn cancel_interrupts_wait() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lease");
        let _held = take(&p, LockOptions::default()).unwrap();
        let err = lock_exclusive(&p, LockOptions::default(), &|| true, &|_| {}).unwrap_err();
        assert!(matches!(err, LockError::Cancelled { .. }));
    }

    #[test]
    fn records_round_trip() {
        let r = Record::mine(Duration::from_millis(1234));
        assert_eq!(Record::parse(&r.render()), Some(r));
        assert_eq!(Record::parse("pid 12\n"), None);
        assert_eq!(Record::parse(""), None);
    }
}

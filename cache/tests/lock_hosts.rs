//! Step locks between processes that play different hosts (`FORGE_HOST_ID`): each process here
//! re-runs this test binary as a lock holder (the `holder_process` test, a no-op unless told a mode), so the locks
//! are taken by real, separate processes that can be killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use forge_cache::lock::{Acquired, LockError, LockOptions, Reclaim, lock_exclusive};

/// Start this binary as a holder: `mode` is `hold` (take the lock, say so, sleep) or `contend`
/// (take and release it 20 times, logging enter/exit lines).
fn holder(host: Option<&str>, mode: &str, lock: &Path, log: &Path, lease_ms: u64) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "holder_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("FORGE_LOCK_TEST_MODE", mode)
    .env("FORGE_LOCK_TEST_PATH", lock)
    .env("FORGE_LOCK_TEST_LOG", log)
    .env("FORGE_LOCK_LEASE_MS", lease_ms.to_string())
    .env_remove("FORGE_HOST_ID")
    .stdout(std::process::Stdio::null());
    if let Some(h) = host {
        c.env("FORGE_HOST_ID", h);
    }
    c.spawn().unwrap()
}

/// The holder's entry point: a no-op in a normal test run (no `FORGE_LOCK_TEST_MODE`); the
/// other tests start this binary filtered to it, with the mode set.
#[test]
fn holder_process() {
    let Ok(mode) = std::env::var("FORGE_LOCK_TEST_MODE") else {
        return;
    };
    let lock = PathBuf::from(std::env::var("FORGE_LOCK_TEST_PATH").unwrap());
    let log = PathBuf::from(std::env::var("FORGE_LOCK_TEST_LOG").unwrap());
    let append = |line: String| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    };
    let me = std::process::id();
    match mode.as_str() {
        "hold" => {
            let _l = lock_exclusive(&lock, LockOptions::default(), &|| false, &|_| {}).unwrap();
            append(format!("held {me}"));
            std::thread::sleep(Duration::from_secs(120));
        }
        "contend" => {
            for _ in 0..20 {
                let l = lock_exclusive(&lock, LockOptions::default(), &|| false, &|_| {}).unwrap();
                append(format!("enter {me}"));
                std::thread::sleep(Duration::from_millis(5));
                append(format!("exit {me}"));
                drop(l);
            }
        }
        other => panic!("unknown mode {other}"),
    }
}

fn wait_for_line(log: &Path, prefix: &str) {
    let t = Instant::now();
    while !std::fs::read_to_string(log).is_ok_and(|s| s.lines().any(|l| l.starts_with(prefix))) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "holder never said `{prefix}`"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn opts(timeout: Duration) -> LockOptions {
    LockOptions {
        timeout,
        poll: Duration::from_millis(10),
        lease: Duration::from_secs(30),
    }
}

#[test]
fn a_holder_killed_on_another_host_is_reclaimed_after_its_lease_never_before() {
    let d = tempfile::tempdir().unwrap();
    let (lock, log) = (d.path().join("k.lease"), d.path().join("log"));
    let lease = Duration::from_millis(800);
    let mut child = holder(
        Some("host-b"),
        "hold",
        &lock,
        &log,
        lease.as_millis() as u64,
    );
    wait_for_line(&log, "held");
    // Alive and beating: three leases of waiting do not take it.
    match lock_exclusive(&lock, opts(3 * lease), &|| false, &|_| {}) {
        Err(LockError::Timeout { holder, .. }) => {
            let h = holder.unwrap();
            assert_eq!((h.host.as_str(), h.pid), ("host-b", child.id()));
        }
        other => panic!("took a live holder's lock: {other:?}"),
    }
    // Killed outright: its record stays, and nothing on this host can prove it dead.
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let l = lock_exclusive(&lock, opts(10 * lease), &|| false, &|_| {}).unwrap();
    let after = killed.elapsed();
    assert!(
        after >= lease,
        "reclaimed {after:?} after the kill, lease {lease:?}"
    );
    assert!(after < 4 * lease, "took {after:?}");
    match &l.acquired {
        Acquired::Reclaimed { holder, why } => {
            assert_eq!(holder.host, "host-b");
            assert_eq!(*why, Reclaim::LeaseExpired);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_holder_killed_on_this_host_is_reclaimed_at_once() {
    let d = tempfile::tempdir().unwrap();
    let (lock, log) = (d.path().join("k.lease"), d.path().join("log"));
    // A lease far longer than the test: only proof of death can free it.
    let mut child = holder(None, "hold", &lock, &log, 600_000);
    wait_for_line(&log, "held");
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let t = Instant::now();
    let l = lock_exclusive(&lock, opts(Duration::from_secs(20)), &|| false, &|_| {}).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    match &l.acquired {
        Acquired::Reclaimed { holder, why } => {
            assert_eq!((holder.pid, *why), (pid, Reclaim::Dead));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn processes_on_two_hosts_never_hold_one_step_at_once() {
    let d = tempfile::tempdir().unwrap();
    let (lock, log) = (d.path().join("k.lease"), d.path().join("log"));
    let mut a = holder(Some("host-a"), "contend", &lock, &log, 2_000);
    let mut b = holder(Some("host-b"), "contend", &lock, &log, 2_000);
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 80, "{text}");
    for pair in lines.chunks(2) {
        let enter = pair[0].strip_prefix("enter ").expect(&text);
        let exit = pair[1].strip_prefix("exit ").expect(&text);
        assert_eq!(enter, exit, "two holders at once:\n{text}");
    }
    assert!(!lock.exists(), "the last holder released its lock");
}

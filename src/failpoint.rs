//! Crash points for the crash tests: `ABSYNC_FAILPOINT=NAME:N` makes the
//! process abort (no clean-up, like `kill -9`) the Nth time it reaches the
//! point NAME. Unset, a point costs one relaxed atomic load.
//!
//! Points: `before-commit` (the target accepted a change, the snapshot has
//! not recorded it), `after-commit` (just recorded), `after-intent` (an
//! intent is recorded, the write not yet sent), and in the pull's paged
//! search `page-start` (the first entry of a page is about to go through
//! the stages) and `page-end` (every entry of a page went through them, or
//! the search ended, before anything is planned from it).
//!
//! `ABSYNC_PAUSEPOINT=NAME:N:FILE` pauses there instead: the Nth time, the
//! process creates FILE and waits (at most two minutes) until it is
//! removed, so that a test can kill a server at that exact point and let
//! the run go on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn spec() -> &'static Option<(String, u64)> {
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let v = std::env::var("ABSYNC_FAILPOINT").ok()?;
        let (name, n) = v.split_once(':')?;
        Some((name.to_string(), n.parse().ok()?))
    })
}

fn pause_spec() -> &'static Option<(String, u64, std::path::PathBuf)> {
    static SPEC: OnceLock<Option<(String, u64, std::path::PathBuf)>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let v = std::env::var("ABSYNC_PAUSEPOINT").ok()?;
        let mut parts = v.splitn(3, ':');
        let name = parts.next()?.to_string();
        let n = parts.next()?.parse().ok()?;
        Some((name, n, parts.next()?.into()))
    })
}

pub fn hit(name: &str) {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static PAUSES: AtomicU64 = AtomicU64::new(0);
    if let Some((point, at)) = spec() {
        if point == name && COUNT.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            eprintln!("absync: failpoint {name}:{at} reached, aborting");
            std::process::abort();
        }
    }
    if let Some((point, at, file)) = pause_spec() {
        if point == name && PAUSES.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            eprintln!(
                "absync: pausepoint {name}:{at} reached, waiting for {} to go",
                file.display()
            );
            if std::fs::write(file, b"paused\n").is_ok() {
                let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
                while file.exists() && std::time::Instant::now() < until {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }
}

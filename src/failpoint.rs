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

pub fn hit(name: &str) {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    if let Some((point, at)) = spec() {
        if point == name && COUNT.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            eprintln!("absync: failpoint {name}:{at} reached, aborting");
            std::process::abort();
        }
    }
}

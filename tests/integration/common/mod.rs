//! Test support: the shared test bed, and fixtures that give each test its
//! own target OU and source subtree, so tests can run in parallel.

// Not every test module uses every helper.
#![allow(dead_code)]

pub mod check;
pub mod env;
pub mod proxy;
pub mod testbed;

pub use testbed::testbed;

/// A name unique to this test and process, safe in an LDAP RDN.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{name}-{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos & 0xffff
    )
}

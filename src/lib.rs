//! absync: copies the NHS Directory entries a data-sharing agreement allows
//! into a partner's Active Directory, and journals every change.
//!
//! Layout, in the order of the data's way through (ARCHITECTURE.md has the
//! map and the rules of which room may use which):
//! - [`config`], [`agreements`]: the input files, parsed then checked.
//! - [`ldap`]: the LDAP client both ends use (rustls, bind, paged search,
//!   writes, RFC 4533).
//! - [`engine`]: one run, stage by stage: pull → scope → map → diff →
//!   removals → apply (or render, for a plan).
//! - [`state`]: the SQLite database: the snapshot, the journal, the runs,
//!   retention and the auditor's read-only queries.
//! - [`report`]: `journal report`, the journal of a period as one
//!   self-contained HTML page.
//! - [`service`]: `absync run`, the scheduled service, its control socket
//!   and metrics.
//! - [`seal`]: the journal's signing key; [`os`]: who runs absync.
//! - [`dn`], [`secret`], [`failpoint`], [`text`], [`period`]: distinguished
//!   names, passwords, crash-test hooks, characters that hide or control
//!   text, durations; [`maildomains`]: the mail domains a contact's
//!   addresses may be in.
//!
//! The command line lives in `src/bin/absync/`.

// The input files.
pub mod agreements;
pub mod config;

// The LDAP client, below both ends.
pub mod ldap;

// One run, stage by stage.
pub mod engine;

// The SQLite database: snapshot, journal, runs, audit queries.
pub mod state;

// The auditor's report as one HTML page (pure rendering).
pub mod report;

// `absync run`.
pub mod service;

// Small parts everyone may use.
pub mod dn;
pub mod failpoint;
pub mod maildomains;
pub mod os;
pub mod period;
pub mod seal;
pub mod secret;
pub mod text;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod layering;

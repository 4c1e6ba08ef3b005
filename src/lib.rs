//! absync: copies the NHS Directory entries a data-sharing agreement allows
//! into a partner's Active Directory, and journals every change.
//!
//! Layout (the data's way through, top to bottom):
//! - [`config`]: the configuration file, parsed then resolved.
//! - [`agreements`]: the data-sharing agreements and the scope in force today.
//! - [`scope`]: stage 2, which entries and attributes the agreements allow.
//! - [`map`]: stage 3, source entry to target object through the mapping file.
//! - [`pull`]: stage 1, the paged search of the source under the agreements.
//! - [`diff`]: stage 4, mapped objects against the snapshot → planned changes.
//! - [`apply`]: stage 5, changes to the target, then snapshot and journal.
//! - [`snapshot`]: the SQLite state: what was written, intents in flight.
//! - [`journal`]: stage 6, the record of every change, and the runs.
//! - [`audit`]: the auditor's side: verify the chain, queries, export, retention.
//! - [`render`]: a plan as a table, LDIF or JSON.
//! - [`sync`]: one run, all stages in order.
//! - [`daemon`]: `absync run`, the scheduled service; [`control`] (the
//!   resync socket, the file watcher) and [`metrics`] are its adapters.
//! - [`secret`]: passwords, read from files and never printed.
//! - [`dn`]: distinguished names (RFC 4514).
//! - [`ldap`]: the LDAP client both ends use (rustls, bind, paged search, writes);
//!   [`syncrepl`]: its RFC 4533 content-synchronisation search (delta pulls).

pub mod agreements;
pub mod apply;
pub mod audit;
pub mod config;
pub mod control;
pub mod daemon;
pub mod diff;
pub mod dn;
pub mod failpoint;
mod fuzz;
pub mod journal;
pub mod ldap;
pub mod map;
pub mod metrics;
pub mod pull;
pub mod render;
pub mod scope;
pub mod secret;
pub mod snapshot;
pub mod sync;
pub mod syncrepl;

//! absync: copies the NHS Directory entries a data-sharing agreement allows
//! into a partner's Active Directory, and journals every change.
//!
//! Layout (the data's way through, top to bottom):
//! - [`config`]: the configuration file, parsed then resolved.
//! - [`agreements`]: the data-sharing agreements and the scope in force today.
//! - [`scope`]: stage 2, which entries and attributes the agreements allow.
//! - [`map`]: stage 3, source entry to target object through the mapping file.
//! - [`secret`]: passwords, read from files and never printed.
//! - [`dn`]: distinguished names (RFC 4514).
//! - [`ldap`]: the LDAP client both ends use (rustls, bind, paged search, writes).

pub mod agreements;
pub mod config;
pub mod dn;
pub mod ldap;
pub mod map;
pub mod scope;
pub mod secret;

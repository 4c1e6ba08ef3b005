//! absync: copies the NHS Directory entries a data-sharing agreement allows
//! into a partner's Active Directory, and journals every change.
//!
//! Layout (the data's way through, top to bottom):
//! - [`secret`]: passwords, read from files and never printed.
//! - [`ldap`]: the LDAP client both ends use (rustls, bind, paged search, writes).

pub mod ldap;
pub mod secret;

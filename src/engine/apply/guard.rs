//! The last check before every write: the object written (added, modified,
//! renamed or moved from and to, deleted) is a direct child of the managed
//! OU or of the quarantine OU. Planning already keeps to them; this check
//! holds even when a DN came from somewhere planning did not look (a
//! snapshot row, a name read back from the target).
//!
//! **Invariant:** no write leaves the applier for a DN outside
//! `target.base_dn` and `safety.quarantine_ou`; a refused one is journaled
//! as a failed change, like a refusal by the target.

use ldap3::Mod;

use crate::ldap::{AddAttrs, LdapError, Sent};

use super::{Applier, ApplyError};

/// A write absync would not send: its DN is outside the containers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} \"{dn}\" not sent: it is not directly inside {containers}")]
pub struct OutsideOu {
    pub op: &'static str,
    pub dn: String,
    /// The containers, as the configuration names them.
    pub containers: String,
}

/// Why a write did not happen: absync refused to send it, or the target
/// refused it.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Outside(#[from] OutsideOu),
    #[error(transparent)]
    Ldap(#[from] LdapError),
}

impl WriteError {
    /// A refusal of this entry (journaled; the run goes on), as opposed to
    /// a failure of the connection (which ends the run).
    pub fn is_entry_level(&self) -> bool {
        match self {
            WriteError::Outside(_) => true,
            WriteError::Ldap(e) => e.is_entry_level(),
        }
    }

    /// The target's LDAP result code, when the target answered.
    pub fn result_code(&self) -> Option<u32> {
        match self {
            WriteError::Outside(_) => None,
            WriteError::Ldap(e) => e.result_code(),
        }
    }
}

impl From<WriteError> for ApplyError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Outside(o) => ApplyError::Outside(o),
            WriteError::Ldap(e) => ApplyError::Ldap(e),
        }
    }
}

/// Whether absync may write `dn`: a direct child of one of `containers`
/// (compared in normal form, so case and escapes do not matter). `Err`
/// names the write refused.
pub fn check_inside(op: &'static str, dn: &str, containers: &[String]) -> Result<(), OutsideOu> {
    let rdn = crate::dn::first_rdn(dn);
    let parent = crate::dn::normalize(&crate::dn::parent(dn));
    let inside = rdn.contains('=')
        && !parent.is_empty()
        && containers.iter().any(|c| crate::dn::normalize(c) == parent);
    if inside {
        return Ok(());
    }
    Err(OutsideOu {
        op,
        dn: dn.to_string(),
        containers: containers.join(" or "),
    })
}

impl Applier<'_, '_> {
    /// [`check_inside`] against this target's containers.
    pub(super) fn inside(&self, op: &'static str, dn: &str) -> Result<(), OutsideOu> {
        check_inside(op, dn, &self.containers())
    }

    /// Modifies `dn`, once it is found inside the containers.
    pub(super) async fn modify_at(
        &mut self,
        dn: &str,
        mods: Vec<Mod<String>>,
    ) -> Result<(), WriteError> {
        self.inside("modify", dn)?;
        Ok(self.conn.modify(dn, mods).await?)
    }

    /// Deletes `dn`, once it is found inside the containers.
    pub(super) async fn delete_at(&mut self, dn: &str) -> Result<(), WriteError> {
        self.inside("delete", dn)?;
        Ok(self.conn.delete(dn).await?)
    }

    /// Sends an add whose DN is inside the containers, without waiting
    /// for its answer; one outside is refused without being sent.
    pub(super) fn send_inside(&self, dn: String, attrs: AddAttrs) -> Result<Sent, WriteError> {
        self.inside("add", &dn)?;
        Ok(self.conn.add_send(dn, attrs))
    }

    /// The outcome of a pipelined write: its answer, once it came, or
    /// why it was refused unsent.
    pub(super) async fn outcome(&self, sent: Result<Sent, WriteError>) -> Result<(), WriteError> {
        Ok(self.conn.answer(sent?).await?)
    }

    /// Sends a modify of `dn`, once it is found inside the containers,
    /// without waiting for its answer.
    pub(super) fn modify_inside(
        &self,
        dn: String,
        mods: Vec<Mod<String>>,
    ) -> Result<Sent, WriteError> {
        self.inside("modify", &dn)?;
        Ok(self.conn.modify_send(dn, mods))
    }

    /// Sends a delete of `dn`, once it is found inside the containers,
    /// without waiting for its answer.
    pub(super) fn delete_inside(&self, dn: String) -> Result<Sent, WriteError> {
        self.inside("delete", &dn)?;
        Ok(self.conn.delete_send(dn))
    }
}

#[cfg(test)]
mod tests {
    use super::check_inside;

    #[test]
    fn only_direct_children_of_the_containers_may_be_written() {
        let containers = vec![
            "OU=NHS Directory,DC=council,DC=local".to_string(),
            "OU=Quarantine,DC=council,DC=local".to_string(),
        ];
        let ok = |dn: &str| check_inside("modify", dn, &containers);
        assert_eq!(
            ok("CN=Pat Smith,OU=NHS Directory,DC=council,DC=local"),
            Ok(())
        );
        // Case, spacing and escapes do not matter.
        assert_eq!(
            ok("cn=Smith\\, Jr.,ou=nhs directory, dc=council,dc=local"),
            Ok(())
        );
        assert_eq!(ok("CN=Pat,OU=Quarantine,DC=council,DC=local"), Ok(()));
        for outside in [
            "CN=Administrator,CN=Users,DC=council,DC=local",
            "OU=NHS Directory,DC=council,DC=local",
            "CN=Deeper,OU=Sub,OU=NHS Directory,DC=council,DC=local",
            "CN=Pat,OU=NHS Directory,DC=council,DC=local,DC=evil",
            "CN=Pat,OU=NHS Directory2,DC=council,DC=local",
            "OU=NHS Directory\\,DC=council,DC=local",
            "",
        ] {
            let e = ok(outside).unwrap_err();
            assert_eq!(e.dn, outside);
            assert_eq!(
                e.to_string(),
                format!(
                    "modify \"{outside}\" not sent: it is not directly inside \
                     OU=NHS Directory,DC=council,DC=local or OU=Quarantine,DC=council,DC=local"
                )
            );
        }
    }
}

//! The rows the state holds about one object: what absync wrote to the
//! target, when it was hidden, and a write in flight.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Attribute name → values, as the target holds them.
pub type Attrs = BTreeMap<String, Vec<String>>;

/// One object absync created and manages in the target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRow {
    pub anchor: String,
    pub dn: String,
    pub org: String,
    pub agreements: Vec<String>,
    /// The managed attributes as the target accepted them.
    pub attrs: Attrs,
    /// Set while the object is hidden, waiting out its grace period.
    #[serde(default)]
    pub hidden: Option<Hidden>,
}

/// When and why an object was hidden.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hidden {
    /// RFC 3339 time.
    pub at: String,
    pub reason: String,
}

/// A write about to be sent to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub anchor: String,
    pub run_id: i64,
    /// add, update or delete
    pub op: String,
    /// The object before the change (none for an add).
    pub before: Option<ObjectRow>,
    /// The object after the change (none for a delete).
    pub after: Option<ObjectRow>,
    pub reason: String,
    /// The target server the write was sent to (none: written before
    /// absync knew several servers; settled on the server in use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<SentTo>,
    /// RFC 3339: when the intent was committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

impl Intent {
    /// The object's name: where the write would leave it, else where it
    /// was.
    pub fn dn(&self) -> Option<&str> {
        self.after
            .as_ref()
            .or(self.before.as_ref())
            .map(|o| o.dn.as_str())
    }
}

/// A target server: its URL and, for an AD DC, its `dsServiceName` (which
/// names the DC whatever address reaches it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentTo {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl SentTo {
    /// How the server is named to people: its DC name, else its URL.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.url)
    }
}

/// Whether `table` has a column `name` (a migration step run on a database
/// that already has it adds nothing).
pub(crate) fn has_column(
    conn: &rusqlite::Connection,
    table: &str,
    name: &str,
) -> rusqlite::Result<bool> {
    let mut s = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let names = s.query_map([table], |r| r.get::<_, String>(0))?;
    for n in names {
        if n?.eq_ignore_ascii_case(name) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Brings each object's stored normal name (`dn_norm`, which name lookups
/// and the one-object-per-name rule use) in line with
/// [`crate::dn::normalize`]: a database written by an absync whose normal
/// form was wrong (`\+d` read as a hex pair, schema 6 and before) holds
/// stale ones. Runs once, in the migration to schema 7, inside its
/// transaction. Changes nothing when all agree; returns how many it
/// corrected.
pub(crate) fn refresh_dn_norms(conn: &rusqlite::Connection) -> rusqlite::Result<usize> {
    let mut stale = Vec::new();
    {
        let mut s = conn.prepare("SELECT anchor, dn, dn_norm FROM objects")?;
        let mut rows = s.query([])?;
        while let Some(r) = rows.next()? {
            let (dn, norm): (String, String) = (r.get(1)?, r.get(2)?);
            let now = crate::dn::normalize(&dn);
            if now != norm {
                stale.push((r.get::<_, String>(0)?, now));
            }
        }
    }
    if stale.is_empty() {
        return Ok(0);
    }
    {
        let mut set = conn.prepare("UPDATE objects SET dn_norm = ?2 WHERE anchor = ?1")?;
        // Placeholders first (no normal form lacks `=`), so that a stale
        // value another row's new one equals cannot trip the UNIQUE rule.
        for (anchor, _) in &stale {
            set.execute([anchor.as_str(), &format!("stale:{anchor}")])?;
        }
        for (anchor, norm) in &stale {
            set.execute([anchor.as_str(), norm.as_str()])?;
        }
    }
    Ok(stale.len())
}

#[cfg(test)]
mod tests {
    use crate::state::{ObjectRow, Snapshot};

    #[test]
    fn stale_normal_names_are_corrected_by_the_migration_to_schema_7() {
        let dir = tempfile::tempdir().unwrap();
        let row = |anchor: &str, dn: &str| ObjectRow {
            anchor: anchor.into(),
            dn: dn.into(),
            ..Default::default()
        };
        {
            let s = Snapshot::open(dir.path()).unwrap();
            s.commit("a1", Some(&row("a1", "CN=Ann Mid\\+dle,OU=X")), 1, &[])
                .unwrap();
            s.commit("a2", Some(&row("a2", "CN=Bob,OU=X")), 1, &[])
                .unwrap();
            // What the old normal form stored for a1 (`\+d` as byte 0x0d).
            s.conn
                .execute(
                    "UPDATE objects SET dn_norm = 'cn=ann mi\rle,ou=x' WHERE anchor = 'a1'",
                    [],
                )
                .unwrap();
            assert_eq!(s.holder_of("cn=Ann Mid\\2bdle,ou=x").unwrap(), None);
            // A schema 6 database (no conflicts table yet), as the old
            // absync left it.
            s.conn
                .execute_batch("DROP TABLE conflicts; PRAGMA user_version = 6;")
                .unwrap();
        }
        let s = Snapshot::open(dir.path()).unwrap();
        assert_eq!(
            s.holder_of("cn=Ann Mid\\2bdle,ou=x").unwrap().as_deref(),
            Some("a1")
        );
        assert_eq!(s.holder_of("cn=bob,ou=x").unwrap().as_deref(), Some("a2"));
        assert_eq!(
            super::refresh_dn_norms(&s.conn).unwrap(),
            0,
            "all agree now"
        );
    }
}

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
}

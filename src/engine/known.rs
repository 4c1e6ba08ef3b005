//! The state database as the planner asks it ([`Known`]): the one place the
//! diff's questions turn into SQLite reads.

use crate::engine::diff::Known;
use crate::state::{ObjectRow, Snapshot, StateError};

impl Known for Snapshot {
    fn get(&self, anchor: &str) -> Result<Option<ObjectRow>, StateError> {
        Snapshot::get(self, anchor)
    }
    /// A name found held is asked again once the commit thread is done: a
    /// rename the target answered may be waiting there, and the name it
    /// freed is then free, whatever the thread's pace.
    fn holder_of(&self, dn: &str) -> Result<Option<String>, StateError> {
        if Snapshot::holder_of(self, dn)?.is_none() {
            return Ok(None);
        }
        self.settle()?;
        Snapshot::holder_of(self, dn)
    }
    fn org_of(&self, anchor: &str) -> Result<Option<String>, StateError> {
        Snapshot::org_of(self, anchor)
    }
    fn for_each_kept(
        &self,
        keep: &dyn Fn(&str) -> bool,
        f: &mut dyn FnMut(ObjectRow) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        Snapshot::for_each_kept(self, keep, f)
    }
    fn for_each_hidden(
        &self,
        f: &mut dyn FnMut(ObjectRow) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        Snapshot::for_each_hidden(self, f)
    }
}

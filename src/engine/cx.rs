//! What a run is given: its [`Mode`] and [`Options`], the checked input
//! files ([`Inputs`]), and [`RunCx`], the context every stage reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::agreements::{today, Agreements};
use crate::config::{Config, FileError};
use crate::engine::map::Mapping;
use crate::engine::outcome::RunError;
use crate::engine::render::Format;
use crate::state::runs::{Counts, FileHashes};
use crate::state::Snapshot;

/// What a run does with its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Apply to the target, record in the snapshot and journal.
    Apply,
    /// Print the plan; write nothing anywhere.
    Plan(Format),
}

/// What every step of one run reads.
pub(crate) struct RunCx<'a> {
    pub cfg: &'a Config,
    pub inputs: &'a Inputs,
    pub opts: &'a Options,
    pub snapshot: &'a Snapshot,
    /// The files in force, and the key a delta's cookie belongs to.
    pub files: &'a FileHashes,
    /// 0 for a plan (which journals nothing).
    pub run_id: i64,
    /// `Mode::Apply`: the target, snapshot and journal change.
    pub live: bool,
}

/// SHA-256 of the configuration, mapping and agreements files as they are
/// on disk (passwords live in other files and are never hashed).
pub fn file_hashes(cfg: &Config) -> FileHashes {
    let hash = |path: &std::path::Path| {
        format!(
            "{:x}",
            Sha256::digest(std::fs::read(path).unwrap_or_default())
        )
    };
    FileHashes {
        config: hash(&cfg.file),
        mapping: hash(&cfg.mapping_file),
        agreements: hash(&cfg.agreements_file),
    }
}

/// Everything a run needs from the input files, loaded and checked.
pub struct Inputs {
    pub mapping: Mapping,
    pub agreements: Agreements,
}

/// Reads and validates the mapping and agreements, and checks that the
/// config, mapping and safety settings fit together, so `check`, `plan`,
/// `sync` and a reload all refuse the same inputs.
pub fn load_inputs(cfg: &Config) -> Result<Inputs, FileError> {
    let inputs = Inputs {
        mapping: Mapping::load_for(&cfg.mapping_file, &cfg.target.anchor_attribute)?,
        agreements: Agreements::load(&cfg.agreements_file, today())?,
    };
    check_hide_method(cfg, &inputs)?;
    Ok(inputs)
}

/// What a run was asked to do, beyond its mode.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Read the live target too and repair drift (`--full`).
    pub full: bool,
    /// Release at most this many held-back deletes (`--allow-deletes N`).
    pub allow_deletes: Option<u64>,
    /// Plans show only deletes, hides and held-back deletes.
    pub only_deletes: bool,
    /// Set from outside to stop the run after the entry in flight.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Entries pulled so far, for someone watching (the daemon's status).
    pub progress: Option<Arc<AtomicU64>>,
    /// The caller already holds the state directory's lock (the daemon).
    pub lock_held: bool,
    /// Who asked for this run, for the journal (a resync's requester).
    pub requested_by: Option<crate::os::Who>,
    /// Told of every entry pulled and of the run's end (the CLI's
    /// progress line on a terminal).
    pub watch: Option<Watcher>,
}

/// Someone watching a run entry by entry. The engine never prints: the
/// command line shows a progress line through this.
pub trait Watch: Send + Sync {
    /// After each entry pulled, with the counts so far.
    fn entry(&self, counts: &Counts);
    /// When the run's changes are all done.
    fn done(&self);
}

/// A [`Watch`] in [`Options`].
#[derive(Clone)]
pub struct Watcher(pub Arc<dyn Watch>);

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

impl Options {
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Between two entries: ends the run if a stop was asked for.
    /// `deletes` says how far the deletes got, for the run's status.
    pub(crate) fn stop_point(
        &self,
        counts: &Counts,
        deletes: &'static str,
    ) -> Result<(), RunError> {
        if self.cancelled() {
            return Err(RunError::Interrupted {
                pulled: counts.pulled,
                deletes,
            });
        }
        Ok(())
    }
}

/// How far the deletes got when a run was interrupted.
pub(crate) const NO_DELETES: &str = "no deletes were applied";
pub(crate) const SOME_DELETES: &str =
    "the deletes applied before the stop are journaled; the rest wait for the next run";
pub(crate) const CHANGES_DONE: &str =
    "every change was applied and journaled; the compliance check did not finish";

/// A grace period needs somewhere to hide objects: the check across the
/// configuration and the mapping that [`load_inputs`] makes.
pub fn check_hide_method(cfg: &Config, inputs: &Inputs) -> Result<(), FileError> {
    if !cfg.safety.delete_grace.is_zero()
        && cfg.safety.quarantine_ou.is_none()
        && inputs.mapping.hide.is_none()
    {
        return Err(FileError::new(
            &cfg.file,
            None,
            Some("safety.delete_grace"),
            "a grace period needs a way to hide objects: set [safety] quarantine_ou, or a \
             [hide] section in the mapping, or delete_grace = \"0\" to delete at once"
                .into(),
        ));
    }
    Ok(())
}

//! Stage 4, diff: compares each mapped object with the snapshot and plans
//! the change that brings the target in line: add, update (rename and/or
//! modify), delete, or a conflict / rejection that is only reported.
//!
//! Entries arrive one at a time and each is planned as it arrives; only the
//! set of anchors seen and the names claimed in this run are kept, so memory
//! does not hold a second copy of the directory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::config::TargetConfig;
use crate::engine::map::Mapping;
use crate::engine::scope::{SourceEntry, Verdict};
use crate::engine::screen::{screen, Dropped, Screened};
use crate::maildomains::MailDomains;
use crate::state::journal::AttrChange;
use crate::state::runs::Counts;
use crate::state::{Attrs, ObjectRow, StateError};

/// A planned change for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub anchor: String,
    pub reason: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Add {
        after: ObjectRow,
    },
    /// A rename when the DN differs, a modify when attributes differ; both
    /// may be needed. Neither means only the snapshot's bookkeeping changes
    /// (organisation or agreements), with no write to the target.
    Update {
        before: ObjectRow,
        after: ObjectRow,
    },
    Delete {
        before: ObjectRow,
    },
    /// The first step of a delete with a grace period: the object is moved
    /// to the quarantine OU and/or marked hidden; `after.hidden` says when.
    Hide {
        before: ObjectRow,
        after: ObjectRow,
    },
    /// A delete or hide a safety rail held back (threshold, unhealthy
    /// source); shown by plans, applied by nobody.
    Withheld {
        change: Box<Change>,
        why: String,
    },
    /// The object would collide with something absync does not own.
    Conflict {
        dn: String,
        with: String,
        what: String,
        agreements: Vec<String>,
    },
    /// The source entry cannot become an object.
    Reject {
        source_dn: String,
        why: String,
    },
}

/// What planning an entry came to.
#[derive(Debug)]
pub enum Planned {
    /// The change (or nothing to do).
    Done(Option<Change>),
    /// An add or a new name: the target's unowned objects must be read
    /// first (see [`Planner::plan_step`]).
    NeedsTarget(Draft),
}

/// The first step of planning an entry: held, or done with.
enum Admitted {
    Held(SourceEntry, BTreeSet<String>),
    /// Nothing to do, or a rejection (boxed: rejections are rare).
    Done(Option<Box<Change>>),
}

/// An entry planned up to the conflict checks.
#[derive(Debug)]
pub struct Draft {
    is_new_name: bool,
    before: Option<ObjectRow>,
    after: ObjectRow,
    /// Addresses the mail-domain screen dropped, if any.
    dropped: Option<Dropped>,
}

/// A change's reason, with what the mail-domain screen dropped when the
/// change writes it: always for an add, for an update when one of the
/// dropped attributes changes (a contact whose address was dropped before
/// and stays dropped does not repeat it).
fn with_dropped(
    reason: &str,
    dropped: Option<&Dropped>,
    changed: Option<&BTreeMap<String, AttrChange>>,
) -> String {
    let Some(d) = dropped else {
        return reason.to_string();
    };
    let writes = changed.is_none_or(|c| {
        d.attributes
            .iter()
            .any(|a| c.keys().any(|k| k.eq_ignore_ascii_case(a)))
    });
    if writes {
        format!("{reason}; {}", d.note)
    } else {
        reason.to_string()
    }
}

/// A source entry that cannot become an object, counted and explained.
fn reject(anchor: &str, source_dn: String, why: String, counts: &mut Counts) -> Option<Change> {
    counts.rejected += 1;
    Some(Change {
        anchor: anchor.to_string(),
        reason: "invalid entry".into(),
        kind: Kind::Reject { source_dn, why },
    })
}

impl Change {
    pub fn is_rename(&self) -> bool {
        matches!(&self.kind, Kind::Update { before, after } if !same_dn(&before.dn, &after.dn))
    }

    pub fn is_modify(&self) -> bool {
        matches!(&self.kind, Kind::Update { before, after } if !attr_changes(&before.attrs, &after.attrs).is_empty())
    }

    /// True when the change writes nothing to the target.
    pub fn is_bookkeeping(&self) -> bool {
        matches!(self.kind, Kind::Update { .. }) && !self.is_rename() && !self.is_modify()
    }

    /// Deletes, hides and deletes held back: what `--only deletes` shows.
    pub fn is_removal(&self) -> bool {
        matches!(
            self.kind,
            Kind::Delete { .. } | Kind::Hide { .. } | Kind::Withheld { .. }
        )
    }

    /// True when the update brings a hidden object back.
    pub fn is_restore(&self) -> bool {
        matches!(&self.kind, Kind::Update { before, after } if before.hidden.is_some() && after.hidden.is_none())
    }
}

/// The reason of a rename whose name changed in the source.
pub const RENAMED_IN_SOURCE: &str = "renamed in source";
/// The reason of a change that follows a person to another organisation
/// (a tie-breaker naming the organisation gives a new name, the
/// organisation's attributes change).
pub const MOVED_ORGANISATION: &str = "moved organisation";

/// Why an object held before changes, from what changed: brought back
/// from hiding; a new name because the name changed in the source (an
/// attribute that carries the name changed) or because the person moved
/// organisation (only the organisation changed, so a tie-breaker naming it
/// gives the new name); other attributes; or only the agreements.
pub fn update_reason(
    before: &ObjectRow,
    after: &ObjectRow,
    name_attrs: &BTreeSet<String>,
) -> &'static str {
    // An empty organisation is a row a full reconcile re-adopted: not a move.
    let moved = !before.org.is_empty() && !before.org.eq_ignore_ascii_case(&after.org);
    let changes = attr_changes(&before.attrs, &after.attrs);
    let name_changed = changes
        .keys()
        .any(|k| name_attrs.contains(&k.to_ascii_lowercase()));
    if before.hidden.is_some() {
        "back in scope"
    } else if !same_dn(&before.dn, &after.dn) && (name_changed || !moved) {
        RENAMED_IN_SOURCE
    } else if moved {
        MOVED_ORGANISATION
    } else if !changes.is_empty() {
        "attributes changed"
    } else {
        "scope changed"
    }
}

/// The target attributes that carry the name (lower-case): those the
/// mapping fills from a source attribute the RDN is made of
/// (`rdn.first_of`; tie-breakers are not the name).
pub fn name_attributes(mapping: &Mapping) -> BTreeSet<String> {
    let sources = |target: &str| -> BTreeSet<String> {
        mapping
            .sources_of(target)
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect()
    };
    let rdn = sources(&mapping.rdn_attribute);
    mapping
        .rules
        .iter()
        .filter(|r| !sources(&r.target).is_disjoint(&rdn))
        .map(|r| r.target.to_ascii_lowercase())
        .collect()
}

pub fn same_dn(a: &str, b: &str) -> bool {
    // Byte-equal names are the common case (a name absync wrote itself).
    a == b || crate::dn::normalize(a) == crate::dn::normalize(b)
}

/// Everything an add sends: object classes, the RDN attribute, the anchor,
/// then the mapped attributes.
pub fn add_attributes(
    mapping: &Mapping,
    target: &TargetConfig,
    after: &ObjectRow,
) -> Vec<(String, Vec<String>)> {
    let rdn_value = crate::dn::rdn_value(&after.dn);
    let mut attrs = vec![
        ("objectClass".to_string(), mapping.object_class.clone()),
        (mapping.rdn_attribute.clone(), vec![rdn_value]),
        (
            target.anchor_attribute.clone(),
            vec![format!("{}{}", target.anchor_prefix, after.anchor)],
        ),
    ];
    attrs.extend(after.attrs.iter().map(|(k, v)| (k.clone(), v.clone())));
    attrs
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// Per attribute, old and new values where they differ (as sets).
pub fn attr_changes(before: &Attrs, after: &Attrs) -> BTreeMap<String, AttrChange> {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let empty = Vec::new();
    keys.into_iter()
        .filter_map(|k| {
            let old = before.get(k).unwrap_or(&empty);
            let new = after.get(k).unwrap_or(&empty);
            // Equal lists are equal sets: sorting copies, so only lists
            // that differ are sorted to compare.
            (old != new && sorted(old) != sorted(new)).then(|| {
                (
                    k.clone(),
                    AttrChange {
                        old: old.clone(),
                        new: new.clone(),
                    },
                )
            })
        })
        .collect()
}

/// An anchor as anchors are compared for being the same: folded to lower
/// case (AD matches anchors without regard to case).
pub fn fold(anchor: &str) -> String {
    anchor.to_lowercase()
}

/// How many entries in scope claim each anchor (folded): what the pull's
/// pre-pass counts when the source does not keep its anchors unique.
#[derive(Debug, Default)]
pub struct Tally(HashMap<String, u32>);

impl Tally {
    pub fn add(&mut self, anchor: &str) {
        *self.0.entry(fold(anchor)).or_default() += 1;
    }

    /// The anchors claimed more than once.
    pub fn disputed(&self) -> Disputed {
        Disputed(
            self.0
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(a, n)| (a.clone(), *n))
                .collect(),
        )
    }

    /// Takes out of what a delta says is gone the anchors an entry in scope
    /// still claims (compared without regard to case): an entry that left
    /// the filter carrying another person's anchor does not remove that
    /// person's object. The next full pull settles them. Returns how many
    /// were kept.
    pub fn keep_claimed(&self, gone: &mut HashSet<String>) -> usize {
        let before = gone.len();
        gone.retain(|a| !self.0.contains_key(&fold(a)));
        before - gone.len()
    }
}

/// Anchors (folded) that more than one entry in scope claims, with how many
/// claim each. Every entry claiming one is refused, whichever is read
/// first: neither takes over the object absync holds for the anchor.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Disputed(HashMap<String, u32>);

impl Disputed {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many entries claim this folded anchor, if more than one do.
    fn claims(&self, folded: &str) -> Option<u32> {
        self.0.get(folded).copied()
    }
}

/// Why an entry claiming a disputed anchor is refused.
fn disputed_reason(claims: u32) -> String {
    let none = if claims == 2 { "neither" } else { "none" };
    format!(
        "{claims} source entries claim this anchor (compared without regard to case); \
         {none} is copied until the source is corrected"
    )
}

/// Objects in the managed OU that absync does not own, found by one search
/// at the start of a run.
#[derive(Debug, Default, Clone)]
pub struct Unowned {
    /// Normalised DN → DN as the target spells it.
    pub dns: HashMap<String, String>,
    /// Lower-case mail → DN.
    pub mails: HashMap<String, String>,
}

/// What the planner needs to know of what absync last wrote: the state's
/// rows, asked for one at a time. The state database answers
/// ([`crate::engine::known`]); the planner itself does no I/O.
pub trait Known {
    /// The row of `anchor`, if absync holds the object.
    fn get(&self, anchor: &str) -> Result<Option<ObjectRow>, StateError>;
    /// The anchor of the object holding this name, if any.
    fn holder_of(&self, dn: &str) -> Result<Option<String>, StateError>;
    /// The organisation of `anchor`'s object, if held.
    fn org_of(&self, anchor: &str) -> Result<Option<String>, StateError>;
    /// Every row whose anchor `keep` accepts (decided before decoding).
    fn for_each_kept(
        &self,
        keep: &dyn Fn(&str) -> bool,
        f: &mut dyn FnMut(ObjectRow) -> Result<(), StateError>,
    ) -> Result<(), StateError>;
    /// Every hidden row.
    fn for_each_hidden(
        &self,
        f: &mut dyn FnMut(ObjectRow) -> Result<(), StateError>,
    ) -> Result<(), StateError>;
}

pub struct Planner<'a> {
    snapshot: &'a dyn Known,
    mapping: &'a Mapping,
    target_base: String,
    /// Read from the target when first needed (`None` until then).
    unowned: Option<Unowned>,
    /// Normalised DN → anchor, for names claimed by adds and renames this run.
    claimed: HashMap<String, String>,
    seen: HashSet<String>,
    /// The anchors held this run, folded to lower case → as written: a
    /// later anchor that differs only by case is refused.
    held_folded: HashMap<String, String>,
    /// The snapshot's anchors folded to lower case, read on the first new
    /// anchor (`None` until then).
    known_folded: Option<HashSet<String>>,
    /// Anchors a delta pull's present phase named as unchanged.
    present: HashSet<String>,
    /// Anchors (folded) more than one entry in scope claims, from the
    /// pull's pre-pass: every entry claiming one is refused.
    disputed: Disputed,
    /// The disputed anchors this run read: the objects absync holds under
    /// them stay as they are (never modified, renamed, hidden or deleted).
    disputed_read: HashSet<String>,
    /// Why an anchor was seen but not held (leaver, left scope).
    not_held: HashMap<String, String>,
    /// Rows a full reconcile corrected from the live target: `Some` replaces
    /// (or adds) the snapshot's row, `None` hides it.
    overlay: HashMap<String, Option<ObjectRow>>,
    /// Entries pulled per organisation, for the empty-organisation guard.
    pub pulled_per_org: HashMap<String, u64>,
    /// The target attributes that carry the name (see [`name_attributes`]).
    name_attrs: BTreeSet<String>,
    /// The mail-domain allow-list, when configured.
    mail_domains: Option<&'a MailDomains>,
}

impl<'a> Planner<'a> {
    pub fn new(
        snapshot: &'a dyn Known,
        mapping: &'a Mapping,
        target_base: &str,
        unowned: Option<Unowned>,
    ) -> Self {
        Planner {
            snapshot,
            mapping,
            target_base: target_base.to_string(),
            unowned,
            claimed: HashMap::new(),
            seen: HashSet::new(),
            held_folded: HashMap::new(),
            known_folded: None,
            present: HashSet::new(),
            disputed: Disputed::default(),
            disputed_read: HashSet::new(),
            not_held: HashMap::new(),
            overlay: HashMap::new(),
            pulled_per_org: HashMap::new(),
            name_attrs: name_attributes(mapping),
            mail_domains: None,
        }
    }

    /// Holds every mapped object's addresses to `domains` (`None`: any
    /// address is copied).
    pub fn with_mail_domains(mut self, domains: Option<&'a MailDomains>) -> Self {
        self.mail_domains = domains;
        self
    }

    /// The anchors more than one entry in scope claims (the pull's
    /// pre-pass).
    pub fn set_disputed(&mut self, disputed: Disputed) {
        self.disputed = disputed;
    }

    /// The disputed anchors, handed on to a fresh planner.
    pub fn take_disputed(&mut self) -> Disputed {
        std::mem::take(&mut self.disputed)
    }

    /// Why an entry with `anchor` is refused for claiming a disputed anchor
    /// (`None`: it does not). The anchor is remembered as read.
    fn dispute(&mut self, anchor: &str) -> Option<String> {
        if self.disputed.is_empty() {
            return None;
        }
        let folded = fold(anchor);
        let claims = self.disputed.claims(&folded)?;
        self.disputed_read.insert(folded);
        Some(disputed_reason(claims))
    }

    /// Whether a disputed entry of this run claims `anchor`: its object
    /// stays as it is.
    fn disputed_held(&self, anchor: &str) -> bool {
        !self.disputed_read.is_empty() && self.disputed_read.contains(&fold(anchor))
    }

    /// Uses `row` instead of the snapshot's row for `anchor` (`None`: as if
    /// the snapshot had none). Names held by overlaid rows count as taken.
    pub fn overlay(&mut self, anchor: &str, row: Option<ObjectRow>) {
        if let Some(r) = &row {
            self.claimed
                .insert(crate::dn::normalize(&r.dn), anchor.to_string());
        }
        self.overlay.insert(anchor.to_string(), row);
    }

    fn row(&self, anchor: &str) -> Result<Option<ObjectRow>, StateError> {
        match self.overlay.get(anchor) {
            Some(r) => Ok(r.clone()),
            None => self.snapshot.get(anchor),
        }
    }

    fn dn_for(&self, rdn_value: &str) -> String {
        format!(
            "{}={},{}",
            self.mapping.rdn_attribute,
            crate::dn::escape_value(rdn_value),
            self.target_base
        )
    }

    /// Whether a name is free for `anchor`: not held by another managed
    /// object, not claimed by another in this run.
    fn free_for(&self, dn: &str, anchor: &str) -> Result<bool, StateError> {
        let norm = crate::dn::normalize(dn);
        if let Some(holder) = self.claimed.get(&norm) {
            return Ok(holder == anchor);
        }
        Ok(match self.snapshot.holder_of(dn)? {
            // A row the overlay removed or moved no longer holds its name.
            Some(holder)
                if self
                    .overlay
                    .get(&holder)
                    .is_some_and(|r| r.as_ref().is_none_or(|r| !same_dn(&r.dn, dn))) =>
            {
                true
            }
            Some(holder) => holder == anchor,
            None => true,
        })
    }

    /// Why `anchor` is refused for differing only by case from another
    /// anchor (`None`: it does not). AD compares anchors without regard to
    /// case, so two such anchors could name one object. The anchor absync
    /// already holds (`known`) keeps its object; a new one is refused when
    /// the snapshot holds one of its case variants, or when another entry
    /// of this run that is held already has. Anchors refused are not
    /// remembered, so a newcomer read first never displaces the holder.
    fn case_twin(&mut self, anchor: &str, known: bool) -> Result<Option<String>, StateError> {
        let folded = fold(anchor);
        if let Some(other) = self.held_folded.get(&folded) {
            if other != anchor {
                return Ok(Some(
                    "another source entry's anchor differs from this one only by case".into(),
                ));
            }
        }
        if !known && self.known_folded()?.contains(&folded) {
            return Ok(Some(
                "the anchor of an object absync holds differs from this one only by case".into(),
            ));
        }
        self.held_folded.insert(folded, anchor.to_string());
        Ok(None)
    }

    /// The snapshot's anchors (with the full reconcile's overlay), folded
    /// to lower case; read once, on first need. Rows are not decoded.
    fn known_folded(&mut self) -> Result<&HashSet<String>, StateError> {
        if self.known_folded.is_none() {
            let all = std::cell::RefCell::new(HashSet::new());
            let overlay = &self.overlay;
            self.snapshot.for_each_kept(
                &|a| {
                    if !matches!(overlay.get(a), Some(None)) {
                        all.borrow_mut().insert(fold(a));
                    }
                    false
                },
                &mut |_| Ok(()),
            )?;
            let mut all = all.into_inner();
            for (a, row) in overlay {
                if row.is_some() {
                    all.insert(fold(a));
                }
            }
            self.known_folded = Some(all);
        }
        Ok(self.known_folded.get_or_insert_with(HashSet::new))
    }

    /// Plans one source entry, up to the point where the target's list of
    /// objects absync does not own is needed (an add or a new name) and has
    /// not been read yet: then the caller reads it, hands it over with
    /// [`Self::set_unowned`], and calls [`Self::finish`].
    pub fn plan_step(
        &mut self,
        verdict: Verdict,
        counts: &mut Counts,
    ) -> Result<Planned, StateError> {
        let (entry, agreements) = match self.admit(verdict, counts) {
            Admitted::Held(entry, agreements) => (entry, agreements),
            Admitted::Done(done) => return Ok(Planned::Done(done.map(|c| *c))),
        };
        let agreements: Vec<String> = agreements.into_iter().collect();
        let mapped = match self.mapping.map(&entry) {
            Ok(m) => m,
            Err(why) => return Ok(Planned::Done(reject(&entry.anchor, entry.dn, why, counts))),
        };
        let (mapped, dropped) = match self.mail_domains {
            None => (mapped, None),
            Some(domains) => match screen(self.mapping, domains, &entry, mapped) {
                Screened::Clean(m) => (m, None),
                Screened::Dropped(m, d) => (m, Some(d)),
                Screened::Refused(why) => {
                    return Ok(Planned::Done(reject(&entry.anchor, entry.dn, why, counts)))
                }
            },
        };
        let before = self.row(&entry.anchor)?;
        if let Some(why) = self.case_twin(&entry.anchor, before.is_some())? {
            return Ok(Planned::Done(reject(&entry.anchor, entry.dn, why, counts)));
        }
        *self.pulled_per_org.entry(entry.org.clone()).or_default() += 1;

        // The name: keep the current one while it is still one of this
        // entry's candidates; otherwise the first candidate that is free.
        let candidates: Vec<String> = mapped
            .rdn_candidates
            .iter()
            .map(|c| self.dn_for(c))
            .collect();
        // Byte-equal first: normalising every candidate is the costly way.
        let current = before.as_ref().and_then(|b| {
            candidates
                .iter()
                .find(|c| **c == b.dn)
                .or_else(|| candidates.iter().find(|c| same_dn(c, &b.dn)))
                .cloned()
        });
        let dn = match current {
            Some(dn) => before.as_ref().map(|b| b.dn.clone()).unwrap_or(dn),
            None => {
                let mut chosen = None;
                for c in &candidates {
                    if self.free_for(c, &entry.anchor)? {
                        chosen = Some(c.clone());
                        break;
                    }
                }
                match chosen {
                    Some(dn) => dn,
                    None => {
                        let why = "every candidate name is taken; add a tie-breaker with \
                                   {anchor} to the mapping";
                        return Ok(Planned::Done(reject(
                            &entry.anchor,
                            entry.dn,
                            why.into(),
                            counts,
                        )));
                    }
                }
            }
        };
        let is_new_name = before.as_ref().is_none_or(|b| !same_dn(&b.dn, &dn));
        let draft = Draft {
            is_new_name,
            after: ObjectRow {
                anchor: entry.anchor,
                dn,
                org: entry.org,
                agreements,
                attrs: mapped.attrs,
                hidden: None,
            },
            before,
            dropped,
        };
        // A new name or a new object must not collide with what absync
        // does not own: that needs the target's list, read on first need.
        if (draft.is_new_name || draft.before.is_none()) && self.unowned.is_none() {
            return Ok(Planned::NeedsTarget(draft));
        }
        Ok(Planned::Done(self.finish(draft, counts)))
    }

    /// The first step of planning an entry: an entry that may be held, or
    /// what its verdict comes to (nothing to do, or a rejection). An entry
    /// claiming a disputed anchor is refused, whatever its verdict; so is
    /// the second entry with an anchor this run has read.
    fn admit(&mut self, verdict: Verdict, counts: &mut Counts) -> Admitted {
        let (anchor, dn) = match &verdict {
            Verdict::Hold { entry, .. } => (&entry.anchor, &entry.dn),
            Verdict::Leaver { anchor, dn, .. } | Verdict::OutOfScope { anchor, dn, .. } => {
                (anchor, dn)
            }
            Verdict::Invalid { dn, reason } => {
                return Admitted::Done(
                    reject("", dn.clone(), reason.clone(), counts).map(Box::new),
                );
            }
        };
        if let Some(why) = self.dispute(anchor) {
            if matches!(verdict, Verdict::Hold { .. }) {
                counts.in_scope += 1;
            }
            self.seen.insert(anchor.clone());
            return Admitted::Done(reject(anchor, dn.clone(), why, counts).map(Box::new));
        }
        let (entry, agreements) = match verdict {
            Verdict::Hold {
                entry,
                agreements,
                dropped,
            } => {
                counts.dropped_attributes += dropped as u64;
                (entry, agreements)
            }
            Verdict::Leaver { anchor, org, .. } => {
                counts.leavers += 1;
                *self.pulled_per_org.entry(org).or_default() += 1;
                self.not_held.insert(anchor, "leaver".into());
                return Admitted::Done(None);
            }
            Verdict::OutOfScope { anchor, .. } => {
                counts.out_of_scope += 1;
                self.not_held.insert(anchor, "left scope".into());
                return Admitted::Done(None);
            }
            Verdict::Invalid { .. } => return Admitted::Done(None),
        };
        counts.in_scope += 1;
        if !self.seen.insert(entry.anchor.clone()) {
            let why = "another source entry has the same anchor".to_string();
            return Admitted::Done(reject(&entry.anchor, entry.dn, why, counts).map(Box::new));
        }
        Admitted::Held(entry, agreements)
    }

    /// The objects absync does not own in its OU, once read.
    pub fn set_unowned(&mut self, unowned: Unowned) {
        self.unowned = Some(unowned);
    }

    /// The second half of planning an entry: conflicts with objects absync
    /// does not own, then the change.
    pub fn finish(&mut self, draft: Draft, counts: &mut Counts) -> Option<Change> {
        let Draft {
            is_new_name,
            before,
            after,
            dropped,
        } = draft;
        let empty = Unowned::default();
        let unowned = self.unowned.as_ref().unwrap_or(&empty);
        let norm = if is_new_name {
            crate::dn::normalize(&after.dn)
        } else {
            String::new()
        };
        if is_new_name {
            if let Some(other) = unowned.dns.get(&norm) {
                counts.conflicts += 1;
                return Some(Change {
                    anchor: after.anchor,
                    reason: "conflict".into(),
                    kind: Kind::Conflict {
                        dn: after.dn,
                        with: other.clone(),
                        what: "an object absync does not own already has this name".into(),
                        agreements: after.agreements,
                    },
                });
            }
        }
        if before.is_none() {
            for mail in after.attrs.get("mail").into_iter().flatten() {
                if let Some(other) = unowned.mails.get(&mail.to_lowercase()) {
                    counts.conflicts += 1;
                    let what = format!("an object absync does not own already has mail {mail}");
                    return Some(Change {
                        anchor: after.anchor,
                        reason: "conflict".into(),
                        kind: Kind::Conflict {
                            dn: after.dn,
                            with: other.clone(),
                            what,
                            agreements: after.agreements,
                        },
                    });
                }
            }
        }
        if is_new_name {
            self.claimed.insert(norm, after.anchor.clone());
        }
        match before {
            None => Some(Change {
                anchor: after.anchor.clone(),
                reason: with_dropped("new entry", dropped.as_ref(), None),
                kind: Kind::Add { after },
            }),
            Some(before) if before == after => None,
            Some(before) => {
                let reason = update_reason(&before, &after, &self.name_attrs);
                let changed = attr_changes(&before.attrs, &after.attrs);
                Some(Change {
                    anchor: after.anchor.clone(),
                    reason: with_dropped(reason, dropped.as_ref(), Some(&changed)),
                    kind: Kind::Update { before, after },
                })
            }
        }
    }

    /// Plans one source entry in one step, with the unowned objects handed
    /// over so far (none, if they never were). `None` when nothing needs
    /// doing.
    pub fn plan(
        &mut self,
        verdict: Verdict,
        counts: &mut Counts,
    ) -> Result<Option<Change>, StateError> {
        Ok(match self.plan_step(verdict, counts)? {
            Planned::Done(change) => change,
            Planned::NeedsTarget(draft) => self.finish(draft, counts),
        })
    }

    /// Whether this run has already planned an entry with this anchor.
    pub fn has_seen(&self, anchor: &str) -> bool {
        self.seen.contains(anchor)
    }

    /// Whether this run read the entry with this anchor: planned it, or
    /// found it a leaver or out of scope.
    pub fn has_read(&self, anchor: &str) -> bool {
        self.seen.contains(anchor) || self.not_held.contains_key(anchor)
    }

    /// A delta's present phase: the entry is unchanged since the cookie.
    /// It counts as read, for its organisation too.
    pub fn mark_present(&mut self, anchor: String) -> Result<(), StateError> {
        if let Some(org) = self.snapshot.org_of(&anchor)? {
            *self.pulled_per_org.entry(org).or_default() += 1;
        }
        self.present.insert(anchor);
        Ok(())
    }

    /// Anchors named present by a delta's present phase.
    pub fn present_count(&self) -> u64 {
        self.present.len() as u64
    }

    /// Why a managed object that was not pulled is no longer held, as far
    /// as the run knows: `None` means the source must be asked.
    fn reason_for(
        &self,
        row: &ObjectRow,
        grants: &BTreeMap<String, crate::agreements::OrgGrant>,
        agreements: &crate::agreements::Agreements,
    ) -> Option<String> {
        if row.org.is_empty() {
            // Re-adopted by a full reconcile: ask the source.
            None
        } else if !grants.contains_key(&row.org) {
            let why = agreements.why_out_of_scope(&row.org, &row.agreements);
            // A closed organisation's people may have gone to its
            // successor, or left: the source is asked.
            if why == crate::agreements::ORGANISATION_CLOSED && row.hidden.is_none() {
                return None;
            }
            Some(why.to_string())
        } else {
            self.not_held.get(&row.anchor).cloned()
        }
    }

    /// Managed objects not seen in this run's pull, each with the reason
    /// known so far: from the pull itself (leaver, left scope) or from the
    /// agreements (agreement expired, organisation removed). `None` means
    /// the source must be asked.
    pub fn unseen(
        &self,
        agreements: &crate::agreements::Agreements,
    ) -> Result<Vec<(ObjectRow, Option<String>)>, StateError> {
        let grants = agreements.grants();
        let mut out = Vec::new();
        let mut visit = |row: ObjectRow| {
            if self.seen.contains(&row.anchor)
                || self.present.contains(&row.anchor)
                || self.disputed_held(&row.anchor)
            {
                return Ok(());
            }
            let reason = self.reason_for(&row, &grants, agreements);
            out.push((row, reason));
            Ok(())
        };
        // Rows of anchors the pull saw are skipped before they are decoded:
        // in a no-change run that is all of them.
        let unseen = |anchor: &str| {
            self.overlay.contains_key(anchor)
                || !(self.seen.contains(anchor)
                    || self.present.contains(anchor)
                    || self.disputed_held(anchor))
        };
        self.snapshot
            .for_each_kept(&unseen, &mut |row| match self.overlay.get(&row.anchor) {
                Some(Some(o)) => visit(o.clone()),
                Some(None) => Ok(()),
                None => visit(row),
            })?;
        for (anchor, row) in &self.overlay {
            if let Some(row) = row {
                if self.snapshot.get(anchor)?.is_none() {
                    visit(row.clone())?;
                }
            }
        }
        Ok(out)
    }

    /// The delta's counterpart of [`Self::unseen`]: only the objects the
    /// source said are gone (`gone`), those the pull saw leave (leavers,
    /// out of scope), and the hidden ones, whose grace period may be over.
    /// Everything else is unchanged since the cookie.
    pub fn unseen_listed(
        &self,
        agreements: &crate::agreements::Agreements,
        gone: &HashSet<String>,
    ) -> Result<Vec<(ObjectRow, Option<String>)>, StateError> {
        let grants = agreements.grants();
        let mut anchors: BTreeSet<&String> = gone.iter().collect();
        anchors.extend(self.not_held.keys());
        let mut out = Vec::new();
        let mut listed = HashSet::new();
        for anchor in anchors {
            if self.seen.contains(anchor) || self.disputed_held(anchor) {
                continue;
            }
            if let Some(row) = self.snapshot.get(anchor)? {
                listed.insert(row.anchor.clone());
                let reason = self.reason_for(&row, &grants, agreements);
                out.push((row, reason));
            }
        }
        self.snapshot.for_each_hidden(&mut |row| {
            if !listed.contains(&row.anchor)
                && !self.seen.contains(&row.anchor)
                && !self.disputed_held(&row.anchor)
            {
                out.push((row, None));
            }
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The snapshot as the planner asks it, in memory.
    pub(super) struct Rows(BTreeMap<String, ObjectRow>);

    impl Known for Rows {
        fn get(&self, anchor: &str) -> Result<Option<ObjectRow>, StateError> {
            Ok(self.0.get(anchor).cloned())
        }
        fn holder_of(&self, dn: &str) -> Result<Option<String>, StateError> {
            Ok(self
                .0
                .values()
                .find(|r| same_dn(&r.dn, dn))
                .map(|r| r.anchor.clone()))
        }
        fn org_of(&self, anchor: &str) -> Result<Option<String>, StateError> {
            Ok(self.0.get(anchor).map(|r| r.org.clone()))
        }
        fn for_each_kept(
            &self,
            keep: &dyn Fn(&str) -> bool,
            f: &mut dyn FnMut(ObjectRow) -> Result<(), StateError>,
        ) -> Result<(), StateError> {
            for (a, r) in &self.0 {
                if keep(a) {
                    f(r.clone())?;
                }
            }
            Ok(())
        }
        fn for_each_hidden(
            &self,
            _: &mut dyn FnMut(ObjectRow) -> Result<(), StateError>,
        ) -> Result<(), StateError> {
            Ok(())
        }
    }

    pub(super) const BASE: &str = "OU=NHS,DC=x";

    pub(super) fn mapping() -> Mapping {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(
            &p,
            "object_class = [\"contact\"]\n[rdn]\nattribute = \"cn\"\n\
             first_of = [\"{sn}\"]\ntie_breakers = [\"{anchor}\"]\n\
             [attributes.mail]\ncopy = \"mail\"\n",
        )
        .unwrap();
        Mapping::load(&p).unwrap()
    }

    pub(super) fn hold(anchor: &str, sn: &str, mail: &str) -> Verdict {
        let attrs = [("sn", sn), ("mail", mail)]
            .iter()
            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
            .collect();
        Verdict::Hold {
            entry: SourceEntry {
                anchor: anchor.into(),
                dn: format!("uid={sn},ou=People,o=nhs"),
                org: "RX1".into(),
                attrs,
            },
            agreements: ["DSA-1".to_string()].into(),
            dropped: 0,
        }
    }

    pub(super) fn victim() -> Rows {
        let row = ObjectRow {
            anchor: "emp-v".into(),
            dn: format!("cn=Victim,{BASE}"),
            org: "RX1".into(),
            agreements: vec!["DSA-1".into()],
            attrs: [("mail".to_string(), vec!["victim@nhs.net".to_string()])].into(),
            hidden: None,
        };
        Rows([(row.anchor.clone(), row)].into())
    }

    /// Why the planner refused the entry, if it did.
    fn refused(c: &Option<Change>) -> Option<&str> {
        match c {
            Some(Change {
                kind: Kind::Reject { why, .. },
                ..
            }) => Some(why),
            _ => None,
        }
    }

    #[test]
    fn an_anchor_that_differs_only_by_case_never_takes_the_holders_object() {
        let (rows, m) = (victim(), mapping());
        // The newcomer read first is refused; the holder keeps its object.
        let mut p = Planner::new(&rows, &m, BASE, Some(Unowned::default()));
        let mut counts = Counts::default();
        let attacker = p
            .plan(
                hold("EMP-V", "Victim", "attacker@evil.example"),
                &mut counts,
            )
            .unwrap();
        let why = refused(&attacker).unwrap_or_else(|| panic!("{attacker:?}"));
        assert!(why.contains("differs from this one only by case"), "{why}");
        let own = p
            .plan(hold("emp-v", "Victim", "victim@nhs.net"), &mut counts)
            .unwrap();
        assert_eq!(own, None, "the holder is unchanged");
        // The holder read first: the newcomer is still refused.
        let mut p = Planner::new(&rows, &m, BASE, Some(Unowned::default()));
        let own = p
            .plan(hold("emp-v", "Victim", "victim@nhs.net"), &mut counts)
            .unwrap();
        assert_eq!(own, None);
        let attacker = p
            .plan(hold("Emp-V", "Other", "attacker@evil.example"), &mut counts)
            .unwrap();
        assert!(refused(&attacker).is_some(), "{attacker:?}");
        assert_eq!(counts.rejected, 2);
    }

    #[test]
    fn an_outside_address_is_dropped_or_refused_as_configured_and_said_once() {
        use crate::maildomains::{MailDomains, Outside};
        let m = mapping();
        let rows = Rows(BTreeMap::new());
        let drop = MailDomains::new(&["nhs.net".into()], Outside::Drop).unwrap();
        let mut p =
            Planner::new(&rows, &m, BASE, Some(Unowned::default())).with_mail_domains(Some(&drop));
        let mut counts = Counts::default();
        let add = p
            .plan(hold("a1", "Spoof", "ann@nhs.net.evil.example"), &mut counts)
            .unwrap()
            .unwrap();
        let Kind::Add { after } = &add.kind else {
            panic!("{add:?}")
        };
        assert!(!after.attrs.contains_key("mail"), "{after:?}");
        assert_eq!(
            add.reason,
            "new entry; mail dropped (domain nhs.net.evil.example is not an allowed mail domain)"
        );

        // Held before with that address dropped: a change elsewhere does
        // not repeat it; the address turning outside says so.
        let held = |mail: Option<&str>| ObjectRow {
            anchor: "a1".into(),
            dn: format!("cn=Spoof,{BASE}"),
            org: "RX1".into(),
            agreements: vec!["DSA-1".into()],
            attrs: mail
                .map(|v| [("mail".to_string(), vec![v.to_string()])].into())
                .unwrap_or_default(),
            hidden: None,
        };
        let rows = Rows([("a1".to_string(), held(None))].into());
        let mut p =
            Planner::new(&rows, &m, BASE, Some(Unowned::default())).with_mail_domains(Some(&drop));
        assert_eq!(
            p.plan(hold("a1", "Spoof", "x@gmail.com"), &mut counts)
                .unwrap(),
            None
        );
        let rows = Rows([("a1".to_string(), held(Some("ann@nhs.net")))].into());
        let mut p =
            Planner::new(&rows, &m, BASE, Some(Unowned::default())).with_mail_domains(Some(&drop));
        let update = p
            .plan(hold("a1", "Spoof", "ann@gmail.com"), &mut counts)
            .unwrap()
            .unwrap();
        assert_eq!(
            update.reason,
            "attributes changed; mail dropped (domain gmail.com is not an allowed mail domain)"
        );

        // Refused: the reject path, counted.
        let refuse = MailDomains::new(&["nhs.net".into()], Outside::Refuse).unwrap();
        let rows = Rows(BTreeMap::new());
        let mut p = Planner::new(&rows, &m, BASE, Some(Unowned::default()))
            .with_mail_domains(Some(&refuse));
        let mut counts = Counts::default();
        let c = p
            .plan(hold("a2", "Odd", "a@b@nhs.net"), &mut counts)
            .unwrap();
        let why = refused(&c).unwrap_or_else(|| panic!("{c:?}"));
        assert!(
            why.contains("mail: not a well-formed mail address (several @)"),
            "{why}"
        );
        assert_eq!(counts.rejected, 1);
        let ok = p
            .plan(hold("a3", "Fine", "a@NHS.net"), &mut counts)
            .unwrap();
        assert!(
            matches!(ok, Some(Change { kind: Kind::Add { .. }, ref reason, .. }) if reason == "new entry"),
            "{ok:?}"
        );
    }

    #[test]
    fn between_two_newcomers_the_first_read_is_held_and_the_other_refused() {
        let (rows, m) = (victim(), mapping());
        let mut p = Planner::new(&rows, &m, BASE, Some(Unowned::default()));
        let mut counts = Counts::default();
        let first = p
            .plan(hold("new-a", "Ann", "ann@nhs.net"), &mut counts)
            .unwrap();
        assert!(matches!(
            first,
            Some(Change {
                kind: Kind::Add { .. },
                ..
            })
        ));
        for (anchor, why) in [
            ("NEW-A", "only by case"),
            ("new-a", "another source entry has the same anchor"),
        ] {
            let again = p
                .plan(hold(anchor, "Bob", "bob@nhs.net"), &mut counts)
                .unwrap();
            let got = refused(&again).unwrap_or_else(|| panic!("{again:?}"));
            assert!(got.contains(why), "{got}");
        }
        // Non-ASCII letters fold too.
        let mut p = Planner::new(&rows, &m, BASE, Some(Unowned::default()));
        assert!(refused(&p.plan(hold("émp-1", "A", "a@x"), &mut counts).unwrap()).is_none());
        assert!(refused(&p.plan(hold("ÉMP-1", "B", "b@x"), &mut counts).unwrap()).is_some());
    }

    fn shipped_mapping() -> Mapping {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/mappings/nhs-to-ad-contact.toml"
        );
        Mapping::load(std::path::Path::new(file)).unwrap()
    }

    fn row(cn: &str, org: &str, attrs: &[(&str, &str)]) -> ObjectRow {
        ObjectRow {
            anchor: "a1".into(),
            dn: format!("cn={cn},OU=NHS,DC=example,DC=org"),
            org: org.into(),
            agreements: vec!["DSA-1".into()],
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            hidden: None,
        }
    }

    #[test]
    fn the_name_is_carried_by_the_attributes_made_from_the_rdn_sources() {
        let names: Vec<String> = name_attributes(&shipped_mapping()).into_iter().collect();
        assert_eq!(names, ["displayname", "givenname", "sn"]);
    }

    #[test]
    fn a_move_to_another_organisation_is_not_a_rename_in_the_source() {
        let names = name_attributes(&shipped_mapping());
        let ann = |cn: &str, org: &str, sn: &str| {
            row(cn, org, &[("sn", sn), ("company", &format!("NHS {org}"))])
        };
        // Moved: the tie-broken name follows the organisation.
        let before = ann("Ann Lee (RX1)", "RX1", "Lee");
        let after = ann("Ann Lee (RX2)", "RX2", "Lee");
        assert_eq!(update_reason(&before, &after, &names), MOVED_ORGANISATION);
        // Moved, name unchanged: the organisation's attributes change.
        let (b, a) = (ann("Ann Lee", "RX1", "Lee"), ann("Ann Lee", "RX2", "Lee"));
        assert_eq!(update_reason(&b, &a, &names), MOVED_ORGANISATION);
        // Renamed in the source, same organisation.
        let after = ann("Ann Smith (RX1)", "RX1", "Smith");
        assert_eq!(update_reason(&before, &after, &names), RENAMED_IN_SOURCE);
        // Both at once: the new name is the source's (the move shows on the
        // modify record, see `apply::update`).
        let after = ann("Ann Smith", "RX2", "Smith");
        assert_eq!(update_reason(&before, &after, &names), RENAMED_IN_SOURCE);
        // Only an attribute, only the agreements, back from hiding.
        let after = row(
            "Ann Lee (RX1)",
            "RX1",
            &[("sn", "Lee"), ("company", "NHS RX1"), ("title", "Dr")],
        );
        assert_eq!(update_reason(&before, &after, &names), "attributes changed");
        let mut after = before.clone();
        after.agreements = vec!["DSA-2".into()];
        assert_eq!(update_reason(&before, &after, &names), "scope changed");
        let mut hidden = before.clone();
        hidden.hidden = Some(crate::state::Hidden {
            at: "2026-01-01T00:00:00Z".into(),
            reason: "leaver".into(),
        });
        assert_eq!(update_reason(&hidden, &after, &names), "back in scope");
        // A row a full reconcile re-adopted has no organisation yet.
        let mut adopted = before.clone();
        adopted.org = String::new();
        assert_eq!(update_reason(&adopted, &after, &names), "scope changed");
    }
}

#[cfg(test)]
mod disputed_tests {
    use super::*;
    use crate::agreements::Agreements;

    fn disputed(anchors: &[&str]) -> Disputed {
        let mut t = Tally::default();
        for a in anchors {
            t.add(a);
        }
        t.disputed()
    }

    #[test]
    fn the_tally_keeps_the_anchors_claimed_more_than_once_without_regard_to_case() {
        let d = disputed(&[
            "emp-1", "EMP-1", "emp-2", "emp-3", "emp-3", "Emp-3", "ÉMP-4", "émp-4",
        ]);
        assert_eq!(d.len(), 3);
        assert_eq!(d.claims("emp-1"), Some(2));
        assert_eq!(d.claims("emp-2"), None);
        assert_eq!(d.claims("emp-3"), Some(3));
        assert_eq!(d.claims("émp-4"), Some(2));
        assert!(disputed(&["a", "b"]).is_empty());
        // What a delta says is gone, unless an entry in scope claims it.
        let mut t = Tally::default();
        t.add("emp-1");
        let mut gone: HashSet<String> = ["EMP-1".to_string(), "emp-2".to_string()].into();
        assert_eq!(t.keep_claimed(&mut gone), 1);
        assert_eq!(gone, ["emp-2".to_string()].into());
        assert!(disputed_reason(2).starts_with("2 source entries claim this anchor"));
        assert!(disputed_reason(2).contains("neither is copied"));
        assert!(disputed_reason(3).contains("none is copied"));
    }

    fn agreements() -> Agreements {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            "[[agreement]]\nid = \"DSA-1\"\ntitle = \"t\"\norganisations = [\"RX1\"]\n\
             attributes = [\"sn\", \"mail\"]\nvalid_from = 2000-01-01\nvalid_until = 2999-01-01\n",
        )
        .unwrap();
        Agreements::load(&p, time::macros::date!(2026 - 06 - 01)).unwrap()
    }

    /// Plans `entries` in order against the victim's snapshot with `emp-v`
    /// disputed; returns the changes and the unseen objects after a full
    /// pull.
    fn run(entries: Vec<Verdict>) -> (Vec<Option<Change>>, Vec<String>, Counts) {
        let (rows, m) = (super::tests::victim(), super::tests::mapping());
        let mut p = Planner::new(&rows, &m, super::tests::BASE, Some(Unowned::default()));
        p.set_disputed(disputed(&["emp-v", "EMP-V"]));
        let mut counts = Counts::default();
        let changes = entries
            .into_iter()
            .map(|v| p.plan(v, &mut counts).unwrap())
            .collect();
        let unseen = p.unseen(&agreements()).unwrap();
        let listed = p
            .unseen_listed(&agreements(), &["emp-v".to_string()].into())
            .unwrap();
        let mut names: Vec<String> = unseen.into_iter().map(|(r, _)| r.anchor).collect();
        names.extend(
            listed
                .into_iter()
                .map(|(r, _)| format!("listed {}", r.anchor)),
        );
        (changes, names, counts)
    }

    fn why(c: &Option<Change>) -> &str {
        match c {
            Some(Change {
                kind: Kind::Reject { why, .. },
                ..
            }) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    use super::tests::hold;

    #[test]
    fn every_entry_claiming_a_disputed_anchor_is_refused_whichever_comes_first() {
        let attacker = || hold("emp-v", "Mallory", "attacker@evil.example");
        let upper = || hold("EMP-V", "Mallory", "attacker@evil.example");
        let own = || hold("emp-v", "Victim", "victim@nhs.net");
        for order in [
            vec![attacker(), own()],
            vec![own(), attacker()],
            vec![upper(), own()],
            vec![own(), upper()],
            vec![upper(), attacker(), own()],
        ] {
            let n = order.len();
            let (changes, unseen, counts) = run(order);
            for c in &changes {
                assert!(why(c).contains("claim this anchor"), "{c:?}");
            }
            // The victim's object is neither written nor removed.
            assert!(unseen.is_empty(), "{unseen:?}");
            assert_eq!(counts.rejected, n as u64);
            assert_eq!(counts.in_scope, n as u64);
        }
    }

    #[test]
    fn a_leaver_claiming_a_disputed_anchor_is_refused_and_hides_nothing() {
        let leaver = Verdict::Leaver {
            anchor: "EMP-V".into(),
            dn: "uid=m1,ou=People,o=nhs".into(),
            org: "RX1".into(),
        };
        let (changes, unseen, counts) = run(vec![leaver]);
        assert!(why(&changes[0]).contains("2 source entries claim"));
        assert!(unseen.is_empty(), "{unseen:?}");
        assert_eq!(counts.leavers, 0);
    }

    #[test]
    fn a_dispute_the_main_pass_does_not_read_leaves_the_usual_removal() {
        // The source changed between the two passes: nobody claims emp-v.
        let (changes, unseen, _) = run(vec![hold("new-1", "Ann", "ann@nhs.net")]);
        assert!(matches!(
            changes[0],
            Some(Change {
                kind: Kind::Add { .. },
                ..
            })
        ));
        assert_eq!(
            unseen,
            vec!["emp-v".to_string(), "listed emp-v".to_string()]
        );
    }
}

//! The dry run (`plan`, `sync --dry-run`): the reads a real run makes
//! before each write, then the write rendered instead of sent.
//!
//! **Invariant:** a dry run goes through the applier's own code up to each
//! write, and never writes the target, the snapshot or the journal.

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::diff::{same_dn, Change, Kind};
use crate::engine::render::render;
use crate::state::runs::Counts;
use crate::state::{ObjectRow, StateError};

use super::collide::{addresses, collision_text, first_collision};
use super::update::needs_write;
use super::{Applier, ApplyError};

impl Applier<'_, '_> {
    /// The dry-run twin of [`Self::apply`]: the reads a real run makes before
    /// writing (ownership, where the object is now, whether a name is taken),
    /// then the change as the real run would send it, rendered.
    pub(super) async fn dry(
        &mut self,
        change: Change,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let Change {
            anchor,
            reason,
            kind,
        } = change;
        let Some(kind) = self.dry_reads(&anchor, kind, counts).await? else {
            return Ok(());
        };
        self.dry_render(
            Change {
                anchor,
                reason,
                kind,
            },
            counts,
        )
    }

    /// The dry-run twin of an add window: one search of the domain for the
    /// window's addresses, then each add as the real run would end it.
    pub(super) async fn dry_adds(
        &mut self,
        adds: Vec<(ObjectRow, String)>,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let all: BTreeSet<String> = adds.iter().flat_map(|(a, _)| addresses(&a.attrs)).collect();
        let holders = self.holders(&all).await?;
        for (after, reason) in adds {
            let anchor = after.anchor.clone();
            let kind = self.dry_add(&anchor, after, &holders, counts).await?;
            self.dry_render(
                Change {
                    anchor,
                    reason,
                    kind,
                },
                counts,
            )?;
        }
        Ok(())
    }

    /// Counts `change` as planned and renders it.
    fn dry_render(&mut self, change: Change, counts: &mut Counts) -> Result<(), ApplyError> {
        count_planned(&change, counts);
        if let Some(plan) = self.plan.as_mut() {
            if !plan.only_deletes || change.is_removal() {
                let text = render(&change, plan.format, self.mapping, self.target);
                plan.out
                    .write_all(text.as_bytes())
                    .map_err(|e| StateError::Output(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The change as the real run would send it, after the same reads;
    /// `None` when it would send nothing.
    async fn dry_reads(
        &mut self,
        anchor: &str,
        kind: Kind,
        counts: &mut Counts,
    ) -> Result<Option<Kind>, ApplyError> {
        let kind = match kind {
            Kind::Add { after } => {
                let holders = self.holders(&addresses(&after.attrs)).await?;
                self.dry_add(anchor, after, &holders, counts).await?
            }
            Kind::Update { before, after } => {
                if !needs_write(&before, &after) {
                    return Ok(None);
                }
                match self.locate(anchor, Some(&before.dn)).await? {
                    None => {
                        let holders = self.holders(&addresses(&after.attrs)).await?;
                        self.dry_add(anchor, after, &holders, counts).await?
                    }
                    Some((dn, attrs)) => {
                        let before = ObjectRow {
                            dn,
                            attrs,
                            ..before
                        };
                        match self.collision(&before.attrs, &after.attrs).await? {
                            Some((addr, other)) => {
                                counts.conflicts += 1;
                                Kind::Conflict {
                                    what: collision_text(&addr, &other),
                                    with: other,
                                    dn: before.dn,
                                    agreements: after.agreements,
                                }
                            }
                            None => Kind::Update { before, after },
                        }
                    }
                }
            }
            Kind::Hide { before, after } => match self.locate(anchor, Some(&before.dn)).await? {
                None => return Ok(None),
                Some((dn, attrs)) => Kind::Hide {
                    before: ObjectRow {
                        dn,
                        attrs,
                        ..before
                    },
                    after,
                },
            },
            Kind::Delete { before } => match self.locate(anchor, Some(&before.dn)).await? {
                None => return Ok(None),
                Some((dn, attrs)) => Kind::Delete {
                    before: ObjectRow {
                        dn,
                        attrs,
                        ..before
                    },
                },
            },
            other => other,
        };
        Ok(Some(kind))
    }

    /// An add as the real run would end it: withheld when another object
    /// in the domain has one of its addresses (`holders`, see
    /// [`Self::holders`]); sent, or, when the name is taken, adopted (ours)
    /// or a conflict (someone else's).
    async fn dry_add(
        &mut self,
        anchor: &str,
        after: ObjectRow,
        holders: &BTreeMap<String, String>,
        counts: &mut Counts,
    ) -> Result<Kind, ApplyError> {
        if let Some((addr, other)) = first_collision(&addresses(&after.attrs), holders) {
            counts.conflicts += 1;
            return Ok(Kind::Conflict {
                what: collision_text(&addr, &other),
                with: other,
                dn: after.dn,
                agreements: after.agreements,
            });
        }
        let names = [self.target.anchor_attribute.as_str()];
        let Some(e) = self.conn.read(&after.dn, &names).await? else {
            return Ok(Kind::Add { after });
        };
        Ok(match self.locate(anchor, Some(&e.dn)).await? {
            Some((dn, attrs)) if same_dn(&dn, &after.dn) => Kind::Update {
                before: ObjectRow {
                    dn,
                    attrs,
                    ..after.clone()
                },
                after,
            },
            _ => {
                counts.conflicts += 1;
                Kind::Conflict {
                    with: e.dn,
                    dn: after.dn,
                    what: "an object absync does not own already has this name".into(),
                    agreements: after.agreements,
                }
            }
        })
    }
}

/// In a plan, counts what would be written.
pub fn count_planned(c: &Change, counts: &mut Counts) {
    match &c.kind {
        Kind::Add { .. } => counts.added += 1,
        Kind::Delete { .. } => counts.deleted += 1,
        Kind::Hide { .. } => counts.hidden += 1,
        Kind::Update { .. } => {
            if c.is_restore() {
                counts.restored += 1;
            } else if c.is_rename() {
                counts.renamed += 1;
            }
            if c.is_modify() {
                counts.modified += 1;
            }
        }
        Kind::Withheld { .. } | Kind::Conflict { .. } | Kind::Reject { .. } => {}
    }
}

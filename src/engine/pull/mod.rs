//! Stage 1, pull: reads the source under the agreements and hands every
//! entry to the stages as it comes.
//!
//! A run pulls either everything in scope (a full pull, paged) or only what
//! changed since the last run (a delta pull: RFC 4533 content
//! synchronisation from the cookie the last run stored, see
//! [`crate::ldap::syncrepl`], or `modifyTimestamp` since a stored
//! watermark, see [`delta`]). A delta needs the same scope as the run that
//! took the cookie: any change of filter, attributes, agreements, mapping or
//! configuration makes the run a full pull ([`query::choose`]). A delta
//! the server refuses falls back to a full pull.

pub mod delta;
pub mod query;
pub mod survey;

use std::collections::HashSet;
use std::time::Instant;

use crate::engine::cx::RunCx;
use crate::engine::diff::{Planner, Tally};
use crate::engine::outcome::{PullReport, RunError};
use crate::engine::stages::Stages;
use crate::ldap::Conn;
use crate::state::journal::Record;
use crate::state::{CookieKind, ObjectRow, SourceCookie, StateError};
use delta::DeltaError;
use query::PullMode;

/// What the read of the source leaves for the rest of the run.
pub(crate) struct SourceRead {
    /// The run's filter; `None` when no agreement is in force.
    pub filter: Option<String>,
    /// What a delta says is gone. `None` after a full pull, or a delta
    /// whose present phase named everything unchanged: then what was not
    /// read is gone.
    pub gone: Option<HashSet<String>>,
    /// Where the next delta starts, if the run ends well.
    pub next_cookie: Option<SourceCookie>,
}

/// Reads the source, full or delta, through the stages.
pub(crate) async fn read<'a>(
    cx: &RunCx<'a>,
    st: &mut Stages<'_, 'a, '_>,
    source: &mut Conn,
    report: &mut PullReport,
) -> Result<SourceRead, RunError> {
    let filter = query::filter(&cx.cfg.source, &cx.inputs.agreements);
    let mut read = SourceRead {
        filter: filter.clone(),
        gone: None,
        next_cookie: None,
    };
    let Some(filter) = &filter else {
        tracing::warn!("no data-sharing agreement is in force");
        return Ok(read);
    };
    let attrs = query::attributes(&cx.cfg.source, &cx.inputs.agreements);
    let key = query::scope_key(filter, &attrs, &cx.inputs.agreements, cx.files);
    let stored = cx.snapshot.source_cookie()?;
    let mut mode = query::choose(&cx.cfg.source, cx.opts.full, stored.as_ref(), &key);
    let claims = prepass(cx, st, source, filter, report).await?;
    // Kept only for a timestamp delta, which tells what left the filter.
    let claims = claims.filter(
        |_| matches!(&mode, PullMode::Delta { from } if from.kind == CookieKind::Timestamp),
    );
    let ask = Ask {
        filter,
        attrs: &attrs,
        key: &key,
    };
    if let PullMode::Delta { from } = &mode {
        match ask.delta(cx, st, source, from, report).await? {
            Ok((mut gone, cookie)) => {
                if let (Some(gone), Some(claims)) = (gone.as_mut(), &claims) {
                    let kept = claims.keep_claimed(gone);
                    if kept > 0 {
                        tracing::warn!(
                            kept,
                            "entries that left the filter carry anchors that entries in \
                             scope claim: their objects stay until the next full pull"
                        );
                    }
                }
                read.gone = gone;
                read.next_cookie = Some(cookie);
            }
            Err(why) => mode = PullMode::Full { why },
        }
    }
    if let PullMode::Full { why } = mode {
        read.next_cookie = ask.full(cx, st, source, why, report).await?;
    }
    Ok(read)
}

/// The pre-pass, when the source does not keep anchors unique (any anchor
/// attribute but entryUUID): the anchors in scope are counted, and those
/// several entries claim are handed to the planner, which refuses every
/// entry claiming one. Returns the count (`None`: no pre-pass).
async fn prepass(
    cx: &RunCx<'_>,
    st: &mut Stages<'_, '_, '_>,
    source: &mut Conn,
    filter: &str,
    report: &mut PullReport,
) -> Result<Option<Tally>, RunError> {
    if query::anchors_unique(&cx.cfg.source) {
        return Ok(None);
    }
    let started = Instant::now();
    let claims = query::claims(source, &cx.cfg.source, filter)
        .await
        .map_err(|e| RunError::incomplete(0, e))?;
    report.source_time += started.elapsed();
    let disputed = claims.disputed();
    tracing::info!(
        disputed = disputed.len(),
        ms = started.elapsed().as_millis() as u64,
        "counted the anchors in scope: entries claiming one that several claim are refused"
    );
    st.planner.set_disputed(disputed);
    Ok(Some(claims))
}

impl SourceRead {
    /// Managed objects the read did not see, each with the reason known so
    /// far (`None`: the source must be asked). After a delta, only those it
    /// listed; `report.gone` counts the held ones among them.
    pub(crate) fn unseen(
        &self,
        cx: &RunCx<'_>,
        planner: &Planner<'_>,
        report: &mut PullReport,
    ) -> Result<Vec<(ObjectRow, Option<String>)>, StateError> {
        let agreements = &cx.inputs.agreements;
        let Some(gone) = &self.gone else {
            return planner.unseen(agreements);
        };
        let unseen = planner.unseen_listed(agreements, gone)?;
        // A source may name entries absync never held (syncprov reports
        // what left any filter below the base): count the held ones.
        report.gone = unseen
            .iter()
            .filter(|(row, _)| gone.contains(&row.anchor))
            .count() as u64;
        Ok(unseen)
    }
}

/// What a run asks of the source: the filter, the attributes, and the key
/// of the scope they make (which a cookie belongs to).
struct Ask<'r> {
    filter: &'r str,
    attrs: &'r [String],
    key: &'r str,
}

impl Ask<'_> {
    fn cookie(&self, kind: CookieKind, cookie: Vec<u8>) -> SourceCookie {
        SourceCookie {
            kind,
            cookie,
            scope_key: self.key.to_string(),
        }
    }

    /// The delta since `from`: what is gone and the next cookie, or why it
    /// could not be read (then the caller pulls everything; what the delta
    /// applied is in the snapshot and the planner starts afresh).
    async fn delta<'a>(
        &self,
        cx: &RunCx<'a>,
        st: &mut Stages<'_, 'a, '_>,
        source: &mut Conn,
        from: &SourceCookie,
        report: &mut PullReport,
    ) -> Result<Result<(Option<HashSet<String>>, SourceCookie), String>, RunError> {
        let (filter, attrs) = (self.filter, self.attrs);
        if from.kind == CookieKind::Timestamp {
            let since = String::from_utf8_lossy(&from.cookie).into_owned();
            tracing::info!(%filter, since, "pulling the changes since the last run (modifyTimestamp)");
            let (next, gone) =
                delta::timestamp_pull(st, source, cx.cfg, filter, attrs, &since, report).await?;
            report.mode = "delta";
            report.by_timestamp = true;
            return Ok(Ok((
                Some(gone),
                self.cookie(CookieKind::Timestamp, next.into_bytes()),
            )));
        }
        tracing::info!(%filter, attributes = attrs.len(), "pulling the changes since the last run");
        let from = from.cookie.clone();
        match delta::delta_pull(st, source, cx.cfg, filter, attrs, from.clone(), report).await {
            Ok((done, deleted)) => {
                report.mode = "delta";
                report.gone = deleted.len() as u64;
                report.present = st.planner.present_count();
                let next = self.cookie(CookieKind::Rfc4533, done.cookie.unwrap_or(from));
                // The present phase names every unchanged entry: what it
                // does not name is gone, as after a full pull.
                Ok(Ok((done.refresh_deletes.then_some(deleted), next)))
            }
            Err(DeltaError::Refused(e)) => {
                let why = format!("the delta could not be read: {e}");
                tracing::warn!("{why}; pulling everything instead");
                if cx.live {
                    let mut r = Record::new(cx.run_id, "pull", "full", &why);
                    r.detail = Some(serde_json::json!({ "fallback": "full pull" }));
                    cx.snapshot.journal(&[r])?;
                }
                // What the delta applied is in the snapshot: a fresh
                // planner sees it as done.
                st.applier.flush(cx.snapshot, st.counts).await?;
                let disputed = st.planner.take_disputed();
                *st.planner = Planner::new(
                    cx.snapshot,
                    &cx.inputs.mapping,
                    &cx.cfg.target.base_dn,
                    None,
                )
                .with_mail_domains(cx.cfg.mail_domains.as_ref());
                st.planner.set_disputed(disputed);
                st.counts.reset_pull();
                Ok(Err(why))
            }
            Err(DeltaError::Run(e)) => Err(e),
        }
    }

    /// The full pull: a paged search of everything in scope. Returns where the
    /// next delta starts: an RFC 4533 cookie taken before the read (so changes
    /// made during it come again), else the newest `modifyTimestamp` read.
    async fn full(
        &self,
        cx: &RunCx<'_>,
        st: &mut Stages<'_, '_, '_>,
        source: &mut Conn,
        why: String,
        report: &mut PullReport,
    ) -> Result<Option<SourceCookie>, RunError> {
        let (src, filter) = (&cx.cfg.source, self.filter);
        let mut attrs = self.attrs.to_vec();
        tracing::info!(%filter, attributes = attrs.len(), why, "pulling everything in scope");
        report.mode = "full";
        report.why = Some(why);
        let mut next = None;
        if query::rfc4533_possible(src) {
            match source.current_cookie(&src.base_dn).await {
                Ok(Some(c)) => next = Some(self.cookie(CookieKind::Rfc4533, c)),
                Ok(None) => {
                    tracing::info!("the source does not offer content synchronisation (RFC 4533)")
                }
                Err(e) => tracing::warn!(error = %e, "no RFC 4533 cookie for a delta next run"),
            }
        }
        // Without a cookie, the newest modifyTimestamp read starts the next
        // delta.
        if next.is_none() && query::timestamps_allowed(src) {
            st.watermark = Some(String::new());
            attrs.push(query::MODIFY_TIMESTAMP.to_string());
        }
        let started = Instant::now();
        let search = query::start(source, src, filter, attrs)
            .await
            .map_err(|e| RunError::incomplete(0, e))?;
        report.source_time += started.elapsed();
        st.take_all(search, report).await?;
        let margin = query::TIMESTAMP_MARGIN + started.elapsed();
        if let Some(w) = st.watermark.take().and_then(|w| query::rewind(&w, margin)) {
            next = Some(self.cookie(CookieKind::Timestamp, w.into_bytes()));
        }
        Ok(next)
    }
}

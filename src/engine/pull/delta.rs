//! The delta pulls: RFC 4533 from the stored cookie, or, for sources
//! without it, `modifyTimestamp` since the stored watermark; then the
//! anchors whose change did not land last run, read again.

use std::collections::HashSet;
use std::time::Instant;

use crate::config::Config;
use crate::engine::outcome::{PullReport, RunError};
use crate::engine::pull::query;
use crate::engine::stages::Stages;
use crate::ldap::syncrepl::{self, SyncMessage};
use crate::ldap::{first_value, Conn, LdapError};

/// A delta pull that could not be done: the server refused the cookie
/// (the run falls back to a full pull), or the run cannot go on.
pub(super) enum DeltaError {
    Refused(LdapError),
    Run(RunError),
}

impl<E: Into<RunError>> From<E> for DeltaError {
    fn from(e: E) -> Self {
        DeltaError::Run(e.into())
    }
}

/// The delta pull: RFC 4533 from `cookie`, then the anchors whose change did
/// not land last run, read again. Returns how the server ended the refresh
/// and the anchors it reported gone.
pub(super) async fn delta_pull(
    st: &mut Stages<'_, '_, '_>,
    source: &mut Conn,
    cfg: &Config,
    filter: &str,
    attrs: &[String],
    cookie: Vec<u8>,
    pull: &mut PullReport,
) -> Result<(syncrepl::SyncDone, HashSet<String>), DeltaError> {
    // Refusals of the cookie or of the request itself: a full pull can
    // still be done. Anything else (connection, timeout) ends the run.
    let refused = |e: &LdapError| {
        matches!(
            e.result_code(),
            Some(syncrepl::REFRESH_REQUIRED | 2 | 4 | 11 | 12 | 53)
        )
    };
    let incomplete = |pulled: u64, e: LdapError| {
        if refused(&e) {
            DeltaError::Refused(e)
        } else {
            DeltaError::Run(RunError::incomplete(pulled, e))
        }
    };
    let mut deleted = HashSet::new();
    let waited = Instant::now();
    let mut search = source
        .sync_search(&cfg.source.base_dn, filter, attrs.to_vec(), Some(cookie))
        .await
        .map_err(|e| incomplete(0, e))?;
    pull.source_time += waited.elapsed();
    loop {
        let waited = Instant::now();
        let next = search.next().await;
        pull.source_time += waited.elapsed();
        match next {
            Ok(Some(SyncMessage::Changed(raw))) => st.take(raw).await?,
            Ok(Some(SyncMessage::Present(uuid))) => st.planner.mark_present(uuid)?,
            Ok(Some(SyncMessage::Deleted(uuid))) => {
                deleted.insert(uuid);
            }
            Ok(Some(SyncMessage::IdSet { deletes, uuids })) => {
                for uuid in uuids {
                    if deletes {
                        deleted.insert(uuid);
                    } else {
                        st.planner.mark_present(uuid)?;
                    }
                }
            }
            Ok(Some(SyncMessage::Other)) => {}
            Ok(None) => break,
            Err(e) => return Err(incomplete(st.counts.pulled, e)),
        }
    }
    let waited = Instant::now();
    let done = search
        .finish()
        .await
        .map_err(|e| incomplete(st.counts.pulled, e))?;
    pull.source_time += waited.elapsed();
    reread_retry(st, source, cfg, filter, attrs, &mut deleted, pull)
        .await
        .map_err(DeltaError::Run)?;
    Ok((done, deleted))
}

/// Changes that did not land last run are not sent again by a delta: the
/// anchors are read again. Those no longer in scope join `gone` (a delete
/// that failed last time is planned again).
async fn reread_retry(
    st: &mut Stages<'_, '_, '_>,
    source: &mut Conn,
    cfg: &Config,
    filter: &str,
    attrs: &[String],
    gone: &mut HashSet<String>,
    pull: &mut PullReport,
) -> Result<(), RunError> {
    let retry: Vec<String> = st
        .snapshot
        .retry_anchors()?
        .into_iter()
        .filter(|a| !st.planner.has_seen(a) && !gone.contains(a))
        .collect();
    if retry.is_empty() {
        return Ok(());
    }
    let waited = Instant::now();
    let entries = query::reread(source, &cfg.source, filter, attrs, &retry)
        .await
        .map_err(|e| RunError::incomplete(st.counts.pulled, e))?;
    pull.source_time += waited.elapsed();
    let mut found = HashSet::new();
    for raw in entries {
        if let Some(a) = first_value(&raw, &cfg.source.anchor_attribute) {
            if st.planner.has_seen(&a) {
                continue;
            }
            found.insert(a);
        }
        st.take(raw).await?;
    }
    gone.extend(retry.into_iter().filter(|a| !found.contains(a)));
    Ok(())
}

/// The delta for sources without RFC 4533: the entries in scope whose
/// `modifyTimestamp` is at or after `since`, then the anchors of entries
/// changed since then that no longer match the filter (moved out of scope,
/// leavers; only the anchor is read), then the anchors to read again.
/// Deleted entries leave no trace here: the periodic full pull finds them.
/// Returns the next watermark and the anchors gone.
pub(super) async fn timestamp_pull(
    st: &mut Stages<'_, '_, '_>,
    source: &mut Conn,
    cfg: &Config,
    filter: &str,
    attrs: &[String],
    since: &str,
    pull: &mut PullReport,
) -> Result<(String, HashSet<String>), RunError> {
    let started = Instant::now();
    let stamp = query::MODIFY_TIMESTAMP;
    st.watermark = Some(since.to_string());
    let mut with_stamp = attrs.to_vec();
    with_stamp.push(stamp.to_string());
    let changed = format!("(&{filter}({stamp}>={since}))");
    let waited = Instant::now();
    let search = source
        .paged_search(
            &cfg.source.base_dn,
            ldap3::Scope::Subtree,
            &changed,
            with_stamp,
            cfg.source.page_size,
        )
        .await
        .map_err(|e| RunError::incomplete(0, e))?;
    pull.source_time += waited.elapsed();
    st.take_all(search, pull).await?;
    let newest = st.watermark.take().unwrap_or_else(|| since.to_string());

    let left = format!("(&({stamp}>={since})(!{filter}))");
    let waited = Instant::now();
    let mut gone = HashSet::new();
    let mut search = source
        .paged_search(
            &cfg.source.base_dn,
            ldap3::Scope::Subtree,
            &left,
            vec![cfg.source.anchor_attribute.clone()],
            cfg.source.page_size,
        )
        .await
        .map_err(|e| RunError::incomplete(st.counts.pulled, e))?;
    while let Some(e) = search
        .next()
        .await
        .map_err(|e| RunError::incomplete(st.counts.pulled, e))?
    {
        gone.extend(first_value(&e, &cfg.source.anchor_attribute));
    }
    search
        .finish()
        .await
        .map_err(|e| RunError::incomplete(st.counts.pulled, e))?;
    pull.source_time += waited.elapsed();
    reread_retry(st, source, cfg, filter, attrs, &mut gone, pull).await?;
    let next = query::rewind(&newest, query::TIMESTAMP_MARGIN + started.elapsed())
        .unwrap_or_else(|| since.to_string());
    // Never move the watermark back past where this delta started.
    Ok((next.max(since.to_string()), gone))
}

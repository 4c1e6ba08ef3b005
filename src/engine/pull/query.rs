//! What stage 1 asks of the source: the filter (the configured one ANDed
//! with the agreements' organisations, RFC 4515 escaped), the attributes the
//! agreements allow plus the anchor and the organisation, the scope key a
//! delta's cookie belongs to, full or delta ([`choose`]), and the reads by
//! anchor (why unseen anchors are gone, anchors read again).

use std::collections::BTreeSet;

use ldap3::Scope;
use sha2::{Digest, Sha256};

use crate::agreements::Agreements;
use crate::config::{DeltaMode, SourceConfig};
use crate::engine::diff::Tally;
use crate::engine::scope::anchor_value;
use crate::ldap::{first_value, Conn, LdapError, PagedSearch};
use crate::state::runs::FileHashes;
use crate::state::SourceCookie;

/// How a run reads the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullMode {
    /// Everything in scope; `why` says why not a delta.
    Full { why: String },
    /// Only the changes since the stored cookie (RFC 4533) or watermark
    /// (`modifyTimestamp`).
    Delta { from: SourceCookie },
}

/// Identifies the scope a cookie was taken under: the filter, the
/// attributes, who is covered under which agreements, and the files in
/// force. Two runs with the same key read the source the same way.
pub fn scope_key(
    filter: &str,
    attrs: &[String],
    agreements: &Agreements,
    files: &FileHashes,
) -> String {
    let mut h = Sha256::new();
    for part in [
        filter,
        &attrs.join(","),
        &files.config,
        &files.mapping,
        &files.agreements,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for (org, grant) in agreements.grants() {
        h.update(format!("{org}:{:?}:{:?}", grant.attributes, grant.agreements).as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())
}

/// Delta or full, and why.
pub fn choose(
    source: &SourceConfig,
    full_requested: bool,
    stored: Option<&SourceCookie>,
    key: &str,
) -> PullMode {
    let full = |why: &str| PullMode::Full { why: why.into() };
    if full_requested {
        return full("full run requested");
    }
    if source.delta == DeltaMode::Off {
        return full("delta pulls are off ([source] delta = \"off\")");
    }
    match stored {
        None => full("no cookie from an earlier run"),
        Some(c) if c.scope_key != key => {
            full("the scope changed since the last run (agreements, mapping or configuration)")
        }
        Some(c)
            if c.kind == crate::state::CookieKind::Timestamp
                && !valid_timestamp(&String::from_utf8_lossy(&c.cookie)) =>
        {
            full("the stored modifyTimestamp is not a valid time")
        }
        Some(c) => PullMode::Delta { from: c.clone() },
    }
}

/// RFC 4533 names entries by entryUUID: content synchronisation works only
/// with that anchor, and only when the configuration allows it.
pub fn rfc4533_possible(source: &SourceConfig) -> bool {
    matches!(source.delta, DeltaMode::Auto | DeltaMode::Sync) && anchors_unique(source)
}

/// The source keeps entryUUIDs unique; any other anchor attribute (such as
/// `employeeNumber`) may hold one value in several entries, some of which
/// the source's users may write.
pub fn anchors_unique(source: &SourceConfig) -> bool {
    source.anchor_attribute.eq_ignore_ascii_case("entryUUID")
}

/// The pre-pass of a pull whose anchors the source does not keep unique:
/// the anchor of every entry in scope (same base, scope and filter as the
/// pull, nothing else asked for), and those more than one entry claims,
/// compared without regard to case. It reads the whole scope, also before a
/// delta, so a newcomer claiming an unchanged entry's anchor is caught.
pub async fn claims(
    conn: &mut Conn,
    source: &SourceConfig,
    filter: &str,
) -> Result<Tally, LdapError> {
    let attr = &source.anchor_attribute;
    let mut search = conn
        .paged_search(
            &source.base_dn,
            Scope::Subtree,
            filter,
            vec![attr.clone()],
            source.page_size,
        )
        .await?;
    let mut tally = Tally::default();
    while let Some(e) = search.next().await? {
        // An entry without a valid anchor is rejected as invalid anyway.
        if let Ok(anchor) = anchor_value(attr, &e.attrs) {
            tally.add(&anchor);
        }
    }
    search.finish().await?;
    Ok(tally)
}

/// `modifyTimestamp` deltas, when RFC 4533 is not used.
pub fn timestamps_allowed(source: &SourceConfig) -> bool {
    matches!(source.delta, DeltaMode::Auto | DeltaMode::Timestamp)
}

/// How far back a stored `modifyTimestamp` watermark reaches before the
/// newest change read: a change made while a search ran may carry an older
/// time than one the search returned. Re-reading a few minutes of changes
/// costs little; missing one would last until the next full pull.
pub const TIMESTAMP_MARGIN: std::time::Duration = std::time::Duration::from_secs(300);

/// `t` (generalized time) moved back by `by`, as `YYYYMMDDHHMMSSZ`.
pub fn rewind(t: &str, by: std::time::Duration) -> Option<String> {
    let digits = t.get(..14)?;
    if !valid_timestamp(t) {
        return None;
    }
    let fmt = time::macros::format_description!("[year][month][day][hour][minute][second]");
    let at = time::PrimitiveDateTime::parse(digits, &fmt).ok()?;
    let back = at.checked_sub(time::Duration::try_from(by).ok()?)?;
    Some(format!("{}Z", back.format(&fmt).ok()?))
}

/// The operational attribute timestamp deltas read.
pub const MODIFY_TIMESTAMP: &str = "modifyTimestamp";

/// A watermark as it may appear in a filter: generalized time, nothing else.
pub fn valid_timestamp(t: &str) -> bool {
    t.len() >= 15
        && t.len() <= 32
        && t.ends_with('Z')
        && t[..t.len() - 1]
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
}

/// Reads the given anchors with a filter and attributes (the run's, for
/// changes that did not land last time). Returns the entries found.
pub async fn reread(
    conn: &mut Conn,
    source: &SourceConfig,
    filter: &str,
    attrs: &[String],
    anchors: &[String],
) -> Result<Vec<ldap3::SearchEntry>, LdapError> {
    let mut out = Vec::new();
    for parts in anchor_filters(source, anchors) {
        let mut search = conn
            .paged_search(
                &source.base_dn,
                Scope::Subtree,
                &format!("(&{filter}(|{parts}))"),
                attrs.to_vec(),
                source.page_size,
            )
            .await?;
        while let Some(e) = search.next().await? {
            out.push(e);
        }
        search.finish().await?;
    }
    Ok(out)
}

/// The filter for this run: `None` when no agreement is in force.
pub fn filter(source: &SourceConfig, agreements: &Agreements) -> Option<String> {
    let orgs = agreements.org_filter(&source.org_attribute)?;
    Some(format!("(&{}{orgs})", source.filter))
}

/// The attributes to request: allowed by an agreement, plus the anchor, the
/// organisation and the status attribute.
pub fn attributes(source: &SourceConfig, agreements: &Agreements) -> Vec<String> {
    let mut attrs: BTreeSet<String> = agreements.allowed_attributes();
    for a in [
        &source.anchor_attribute,
        &source.org_attribute,
        &source.status_attribute,
    ] {
        attrs.insert(a.to_lowercase());
    }
    attrs.into_iter().collect()
}

pub async fn start(
    conn: &mut Conn,
    source: &SourceConfig,
    filter: &str,
    attrs: Vec<String>,
) -> Result<PagedSearch, LdapError> {
    Ok(conn
        .paged_search(
            &source.base_dn,
            Scope::Subtree,
            filter,
            attrs,
            source.page_size,
        )
        .await?
        .with_page_failpoints(source.page_size))
}

/// The anchors as filter terms, `(entryUUID=…)(entryUUID=…)`, fifty to a
/// search (escaped: an anchor is data, never filter syntax).
fn anchor_filters<'a>(
    source: &'a SourceConfig,
    anchors: &'a [String],
) -> impl Iterator<Item = String> + 'a {
    anchors.chunks(50).map(move |chunk| {
        chunk
            .iter()
            .map(|a| {
                format!(
                    "({}={})",
                    source.anchor_attribute,
                    ldap3::ldap_escape(a.as_str())
                )
            })
            .collect()
    })
}

/// Asks the source about anchors that were not pulled, to tell why:
/// returns, per anchor found, its organisation and whether it is a leaver.
/// Anchors not returned were deleted from the source.
pub async fn lookup(
    conn: &mut Conn,
    source: &SourceConfig,
    anchors: &[String],
) -> Result<Vec<(String, String, bool)>, LdapError> {
    let attrs = [
        source.anchor_attribute.clone(),
        source.org_attribute.clone(),
        source.status_attribute.clone(),
    ];
    let found = reread(conn, source, "(objectClass=*)", &attrs, anchors).await?;
    Ok(found
        .iter()
        .map(|e| {
            let get = |name: &str| first_value(e, name).unwrap_or_default();
            let leaver = source
                .leaver_values
                .contains(&get(&source.status_attribute).to_lowercase());
            (
                get(&source.anchor_attribute),
                get(&source.org_attribute).to_uppercase(),
                leaver,
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_rewind_and_only_times_pass() {
        assert_eq!(
            rewind("20261125142830Z", TIMESTAMP_MARGIN).as_deref(),
            Some("20261125142330Z")
        );
        assert_eq!(
            rewind("20260101000100.123456Z", TIMESTAMP_MARGIN).as_deref(),
            Some("20251231235600Z")
        );
        assert!(rewind("2026)(uid=*", TIMESTAMP_MARGIN).is_none());
        assert!(!valid_timestamp("20261125142830Z)(objectClass=*"));
        assert!(!valid_timestamp("*"));
    }
}

//! Stage 1, pull: a paged subtree search of the source under the base DN,
//! with the configured filter ANDed with the agreements' organisations,
//! asking only for the attributes the agreements allow plus the anchor and
//! the organisation. Entries stream through one at a time.

use std::collections::BTreeSet;

use ldap3::Scope;

use crate::agreements::Agreements;
use crate::config::SourceConfig;
use crate::ldap::{Conn, LdapError, PagedSearch};

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
    conn.paged_search(
        &source.base_dn,
        Scope::Subtree,
        filter,
        attrs,
        source.page_size,
    )
    .await
}

/// Asks the source about anchors that were not pulled, to tell why:
/// returns, per anchor found, its organisation and whether it is a leaver.
/// Anchors not returned were deleted from the source.
pub async fn lookup(
    conn: &mut Conn,
    source: &SourceConfig,
    anchors: &[String],
) -> Result<Vec<(String, String, bool)>, LdapError> {
    let mut out = Vec::new();
    for chunk in anchors.chunks(50) {
        let parts: String = chunk
            .iter()
            .map(|a| {
                format!(
                    "({}={})",
                    source.anchor_attribute,
                    ldap3::ldap_escape(a.as_str())
                )
            })
            .collect();
        let mut search = conn
            .paged_search(
                &source.base_dn,
                Scope::Subtree,
                &format!("(|{parts})"),
                vec![
                    source.anchor_attribute.clone(),
                    source.org_attribute.clone(),
                    source.status_attribute.clone(),
                ],
                source.page_size,
            )
            .await?;
        while let Some(e) = search.next().await? {
            let get = |name: &str| {
                e.attrs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .and_then(|(_, v)| v.first().cloned())
                    .unwrap_or_default()
            };
            let leaver = source
                .leaver_values
                .contains(&get(&source.status_attribute).to_lowercase());
            out.push((
                get(&source.anchor_attribute),
                get(&source.org_attribute).to_uppercase(),
                leaver,
            ));
        }
        search.finish().await?;
    }
    Ok(out)
}

//! What `absync check` asks the source about the mail-domain allow-list:
//! how many entries in scope have an address outside it. Cheap: the server
//! returns only the candidates, entries whose address attributes hold a
//! value that does not end in an allowed domain (a substring filter), and
//! each candidate goes through scope, map and the screen exactly as a run
//! would take it. An odd address that still ends in an allowed domain
//! (`a@b@nhs.net`) is not a candidate: the count is a floor.

use crate::config::Config;
use crate::engine::cx::Inputs;
use crate::engine::map::Mapping;
use crate::engine::pull::query;
use crate::engine::scope::{Scope, Verdict};
use crate::engine::screen::{self, screen, Screened};
use crate::ldap::{Conn, LdapError};
use crate::maildomains::MailDomains;

/// What the survey found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailSurvey {
    /// Entries the server returned as candidates.
    pub candidates: u64,
    /// Entries in scope a run would write without an address.
    pub dropped: u64,
    /// Entries in scope a run would refuse.
    pub refused: u64,
}

/// The source attributes the mapping makes addresses from that some
/// agreement allows (lower-case).
fn address_sources(mapping: &Mapping, inputs: &Inputs) -> Vec<String> {
    let allowed = inputs.agreements.allowed_attributes();
    // A set: sorted, each once.
    screen::address_sources(mapping)
        .into_iter()
        .filter(|a| allowed.contains(a))
        .collect()
}

/// The filter of candidates: in scope, holding one of `attrs`, and no value
/// of them ending in an allowed domain (`@domain` or `.domain`). `None`
/// when nothing could be a candidate.
pub fn candidates_filter(
    scope_filter: &str,
    attrs: &[String],
    domains: &MailDomains,
) -> Option<String> {
    if attrs.is_empty() {
        return None;
    }
    let mut present = String::new();
    let mut inside = String::new();
    for a in attrs {
        present.push_str(&format!("({a}=*)"));
        for d in domains.allowed() {
            let d = ldap3::ldap_escape(d.as_str());
            inside.push_str(&format!("({a}=*@{d})({a}=*.{d})"));
        }
    }
    Some(format!("(&{scope_filter}(|{present})(!(|{inside})))"))
}

/// Counts the entries in scope that the list would change.
pub async fn mail_domains(
    conn: &mut Conn,
    cfg: &Config,
    inputs: &Inputs,
    domains: &MailDomains,
) -> Result<MailSurvey, LdapError> {
    let mut survey = MailSurvey::default();
    let Some(scope_filter) = query::filter(&cfg.source, &inputs.agreements) else {
        return Ok(survey);
    };
    let sources = address_sources(&inputs.mapping, inputs);
    let Some(filter) = candidates_filter(&scope_filter, &sources, domains) else {
        return Ok(survey);
    };
    let attrs = query::attributes(&cfg.source, &inputs.agreements);
    let scope = Scope::new(&cfg.source, &inputs.agreements);
    let mut search = query::start(conn, &cfg.source, &filter, attrs).await?;
    while let Some(raw) = search.next().await? {
        survey.candidates += 1;
        let Verdict::Hold { entry, .. } = scope.judge(raw) else {
            continue;
        };
        let Ok(mapped) = inputs.mapping.map(&entry) else {
            continue;
        };
        match screen(&inputs.mapping, domains, &entry, mapped) {
            Screened::Clean(_) => {}
            Screened::Dropped(..) => survey.dropped += 1,
            Screened::Refused(_) => survey.refused += 1,
        }
    }
    search.finish().await?;
    Ok(survey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildomains::Outside;

    #[test]
    fn the_candidates_are_the_entries_without_an_allowed_ending() {
        let d = MailDomains::new(&["nhs.net".into(), "nhs.uk".into()], Outside::Drop).unwrap();
        assert_eq!(
            candidates_filter("(o=x)", &["mail".into()], &d).unwrap(),
            "(&(o=x)(|(mail=*))(!(|(mail=*@nhs.net)(mail=*.nhs.net)(mail=*@nhs.uk)\
             (mail=*.nhs.uk))))"
        );
        assert_eq!(candidates_filter("(o=x)", &[], &d), None);
        let parsed = candidates_filter("(o=x)", &["mail".into(), "othermail".into()], &d);
        assert!(ldap3::parse_filter(parsed.unwrap()).is_ok());
    }
}

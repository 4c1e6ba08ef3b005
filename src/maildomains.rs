//! The mail-domain allow-list (`[mail_domains]` in the configuration):
//! which addresses a contact may carry. Spoofed NHS addresses and outside
//! addresses stored against an NHS organisation are a phishing vector in a
//! council's address book, so every address a contact would get is held to
//! the list: `mail`, `targetAddress` and `proxyAddresses`
//! ([`ADDRESS_ATTRIBUTES`]).
//!
//! An address is allowed when it is well formed (one `@`, something on
//! each side, no white space, no control character, no character an
//! unquoted address may not hold) and its domain, taken to its IDNA ASCII
//! form (lower case, Punycode), is an allowed domain or a sub-domain of
//! one: `nhs.uk` allows `x.nhs.uk`, not `evilnhs.uk` nor `nhs.uk.evil.com`.
//! A domain written in an unusual way (full-width letters, an ideographic
//! full stop, a trailing dot, an IP literal) is not well formed: it would
//! read as one domain and may be routed as another.
//!
//! In `targetAddress` and `proxyAddresses` a value may carry Exchange's
//! type prefix: `SMTP:` (primary) or `smtp:` (secondary), any case, is
//! checked as the address after it; any other type (`X500:`, `X400:`,
//! `SIP:`, `EUM:`, ...) names no mail domain that could be checked, so it
//! is not allowed. A value without a prefix is checked as an address.
//!
//! Pure: no I/O, no clock.

use std::fmt;

/// The contact attributes that hold mail addresses (any case).
pub const ADDRESS_ATTRIBUTES: &[&str] = &["mail", "targetAddress", "proxyAddresses"];

/// Whether `attribute` (any case) holds mail addresses.
pub fn is_address_attribute(attribute: &str) -> bool {
    ADDRESS_ATTRIBUTES
        .iter()
        .any(|a| a.eq_ignore_ascii_case(attribute.trim()))
}

/// What happens to an entry with an address outside the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outside {
    /// The address is dropped; the contact is written without it.
    Drop,
    /// The entry is refused (journaled as a rejection).
    Refuse,
}

impl Outside {
    pub fn parse(s: &str) -> Option<Outside> {
        match s {
            "drop" => Some(Outside::Drop),
            "refuse" => Some(Outside::Refuse),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outside::Drop => "drop",
            Outside::Refuse => "refuse",
        }
    }
}

/// The allow-list, checked: each domain in its IDNA ASCII form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailDomains {
    allowed: Vec<String>,
    pub outside: Outside,
}

/// Why an address is not allowed. Its text names the domain, never the
/// part before the `@`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a well-formed address: the reason.
    Malformed(String),
    /// Well formed, in a domain the list does not allow (ASCII form).
    Outside(String),
    /// A proxy address of a type other than SMTP (the type as written).
    NotSmtp(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Malformed(why) => write!(f, "not a well-formed mail address ({why})"),
            Refusal::Outside(domain) => {
                write!(f, "domain {domain} is not an allowed mail domain")
            }
            Refusal::NotSmtp(kind) => write!(
                f,
                "an address of type {kind}, not SMTP (only SMTP addresses can be checked \
                 against the allowed mail domains)"
            ),
        }
    }
}

/// The characters a mail address may not hold outside quotes (quoted
/// local parts are not accepted: no NHS address needs one).
const SPECIALS: &[char] = &['"', '(', ')', ',', ':', ';', '<', '>', '[', '\\', ']'];

/// The domain of a bare address (`local@domain`), as written; `Err` says
/// what is wrong with the address.
pub fn domain_of(address: &str) -> Result<&str, String> {
    if address.is_empty() {
        return Err("empty".into());
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("holds white space or a control character".into());
    }
    let Some((local, domain)) = address.split_once('@') else {
        return Err("no @".into());
    };
    if domain.contains('@') {
        return Err("several @".into());
    }
    if local.is_empty() {
        return Err("nothing before the @".into());
    }
    if local.len() > 64 {
        return Err("more than 64 bytes before the @".into());
    }
    if local.contains(SPECIALS) {
        return Err("a character an unquoted address may not hold before the @".into());
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("a dot at the start or end, or two dots, before the @".into());
    }
    if domain.is_empty() {
        return Err("nothing after the @".into());
    }
    Ok(domain)
}

/// A domain in its IDNA ASCII form (lower case, Punycode), if it is one
/// written the usual way: in that ASCII form (any case) or in its Unicode
/// form (lower case for the comparison). `Err` says why not.
pub fn normalize_domain(domain: &str) -> Result<String, String> {
    if domain.starts_with('[') {
        return Err("an address literal, not a domain".into());
    }
    if domain.ends_with('.') || domain.starts_with('.') {
        return Err("a domain that starts or ends with a dot".into());
    }
    if domain.contains("..") {
        return Err("a domain with an empty label".into());
    }
    let ascii = idna::domain_to_ascii_strict(domain)
        .map_err(|_| "a domain that is not a valid domain name".to_string())?;
    if ascii.is_empty() || ascii.split('.').any(str::is_empty) {
        return Err("a domain with an empty label".into());
    }
    let usual = ascii == domain.to_ascii_lowercase()
        || idna::domain_to_unicode(&ascii).0 == domain.to_lowercase();
    if !usual {
        return Err(format!(
            "a domain written in an unusual form (it reads as {ascii})"
        ));
    }
    Ok(ascii)
}

impl MailDomains {
    /// The list from the configuration; `Err` names the entry that is not
    /// a domain and why. An entry covers its sub-domains: write `nhs.uk`,
    /// not `*.nhs.uk`.
    pub fn new(domains: &[String], outside: Outside) -> Result<MailDomains, String> {
        if domains.is_empty() {
            return Err("names no domain: list at least one (e.g. \"nhs.net\")".into());
        }
        let mut allowed = Vec::new();
        for d in domains {
            if let Some(bare) = d.strip_prefix("*.") {
                return Err(format!(
                    "\"{d}\": write the domain alone ({bare}); its sub-domains are allowed with it"
                ));
            }
            let ascii = normalize_domain(d).map_err(|why| format!("\"{d}\" is {why}"))?;
            if !ascii.contains('.') {
                return Err(format!(
                    "\"{d}\" is a top-level domain alone: name the organisation's domain \
                     (e.g. nhs.uk)"
                ));
            }
            if !allowed.contains(&ascii) {
                allowed.push(ascii);
            }
        }
        Ok(MailDomains { allowed, outside })
    }

    /// The allowed domains, in their ASCII form.
    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }

    /// Whether a domain in ASCII form is allowed: one of the list, or a
    /// sub-domain of one (the label boundary counts: `evilnhs.uk` is not
    /// under `nhs.uk`).
    fn covers(&self, ascii: &str) -> bool {
        self.allowed.iter().any(|a| {
            ascii == a
                || ascii
                    .strip_suffix(a.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        })
    }

    /// Whether a bare address is allowed.
    pub fn check_address(&self, address: &str) -> Result<(), Refusal> {
        let domain = domain_of(address).map_err(Refusal::Malformed)?;
        let ascii = normalize_domain(domain).map_err(Refusal::Malformed)?;
        if self.covers(&ascii) {
            Ok(())
        } else {
            Err(Refusal::Outside(ascii))
        }
    }

    /// Whether a value of the contact attribute `attribute` is allowed:
    /// `mail` holds a bare address; `targetAddress` and `proxyAddresses`
    /// an address with an optional `SMTP:`/`smtp:` prefix (any other type
    /// is refused). Attributes that hold no address are always allowed.
    pub fn check(&self, attribute: &str, value: &str) -> Result<(), Refusal> {
        if !is_address_attribute(attribute) {
            return Ok(());
        }
        if attribute.trim().eq_ignore_ascii_case("mail") {
            return self.check_address(value);
        }
        self.check_address(bare_address(value)?)
    }
}

/// The address in a `targetAddress`/`proxyAddresses` value: after an
/// `SMTP:` prefix (any case), or the value itself when it has no prefix (no
/// `:` before its `@`). Another prefix is refused.
pub fn bare_address(value: &str) -> Result<&str, Refusal> {
    let at = value.find('@').unwrap_or(value.len());
    match value[..at].find(':') {
        None => Ok(value),
        Some(colon) if value[..colon].eq_ignore_ascii_case("smtp") => Ok(&value[colon + 1..]),
        Some(colon) => Err(Refusal::NotSmtp(value[..colon].to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nhs(outside: Outside) -> MailDomains {
        MailDomains::new(&["nhs.net".into(), "NHS.uk".into()], outside).unwrap()
    }

    #[test]
    fn allowed_domains_and_their_sub_domains_match_case_insensitively() {
        let m = nhs(Outside::Drop);
        for ok in [
            "ann.lee@nhs.net",
            "Ann.Lee@NHS.NET",
            "a@x.nhs.uk",
            "a@deep.sub.nhs.uk",
            "a+tag@nhs.net",
            "o'brien@nhs.net",
        ] {
            assert_eq!(m.check_address(ok), Ok(()), "{ok}");
        }
        for (bad, domain) in [
            ("a@evilnhs.uk", "evilnhs.uk"),
            ("a@nhs.uk.evil.com", "nhs.uk.evil.com"),
            ("a@nhs.net.evil", "nhs.net.evil"),
            ("a@gmail.com", "gmail.com"),
            ("a@uk", "uk"),
            ("a@xnhs.net", "xnhs.net"),
        ] {
            assert_eq!(
                m.check_address(bad),
                Err(Refusal::Outside(domain.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn odd_forms_are_not_well_formed() {
        let m = nhs(Outside::Drop);
        for (bad, says) in [
            ("", "empty"),
            ("ann.lee.nhs.net", "no @"),
            ("a@b@nhs.net", "several @"),
            ("@nhs.net", "nothing before the @"),
            ("a@", "nothing after the @"),
            ("a @nhs.net", "white space"),
            ("a@nhs.net ", "white space"),
            ("a\u{0}@nhs.net", "control character"),
            ("\"a@b\"@nhs.net", "several @"),
            ("<a>@nhs.net", "may not hold"),
            ("a..b@nhs.net", "two dots"),
            (".a@nhs.net", "two dots"),
            ("a@[10.0.0.1]", "address literal"),
            ("a@nhs.net.", "ends with a dot"),
            ("a@.nhs.net", "starts or ends with a dot"),
            ("a@nhs..net", "empty label"),
            ("a@nhs_net.uk", "not a valid domain name"),
            ("a@ｎｈｓ.net", "unusual form (it reads as nhs.net)"),
            ("a@nhs。net", "unusual form (it reads as nhs.net)"),
        ] {
            match m.check_address(bad) {
                Err(Refusal::Malformed(why)) => assert!(why.contains(says), "{bad:?}: {why}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = format!("{}@nhs.net", "a".repeat(65));
        assert!(matches!(m.check_address(&long), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn international_domains_compare_in_their_ascii_form() {
        let m = MailDomains::new(&["bücher.example".into()], Outside::Drop).unwrap();
        assert_eq!(m.allowed(), ["xn--bcher-kva.example"]);
        assert_eq!(m.check_address("a@Bücher.example"), Ok(()));
        assert_eq!(m.check_address("a@xn--bcher-kva.example"), Ok(()));
        assert_eq!(m.check_address("a@shop.bücher.example"), Ok(()));
        // A look-alike with a Cyrillic letter is another domain.
        let m = nhs(Outside::Drop);
        match m.check_address("a@nhs.n\u{435}t") {
            Err(Refusal::Outside(d)) => assert!(d.starts_with("nhs.xn--"), "{d}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn proxy_addresses_are_checked_after_their_smtp_prefix_and_other_types_refused() {
        let m = nhs(Outside::Refuse);
        assert_eq!(m.check("proxyAddresses", "SMTP:a@nhs.net"), Ok(()));
        assert_eq!(m.check("PROXYADDRESSES", "smtp:a@x.nhs.uk"), Ok(()));
        assert_eq!(m.check("targetAddress", "SMTP:a@nhs.net"), Ok(()));
        assert_eq!(m.check("targetAddress", "a@nhs.net"), Ok(()));
        assert_eq!(
            m.check("proxyAddresses", "SMTP:a@evil.com"),
            Err(Refusal::Outside("evil.com".into()))
        );
        assert_eq!(
            m.check(
                "proxyAddresses",
                "X500:/o=NHS/ou=Exchange/cn=Recipients/cn=a"
            ),
            Err(Refusal::NotSmtp("X500".into()))
        );
        assert_eq!(
            m.check("proxyAddresses", "sip:a@nhs.net"),
            Err(Refusal::NotSmtp("sip".into()))
        );
        // mail takes no prefix: "SMTP:" there is part of an odd address.
        assert!(matches!(
            m.check("mail", "SMTP:a@nhs.net"),
            Err(Refusal::Malformed(_))
        ));
        // Other attributes are not addresses.
        assert_eq!(m.check("displayName", "a@evil.com"), Ok(()));
        let text = Refusal::Outside("evil.com".into()).to_string();
        assert_eq!(text, "domain evil.com is not an allowed mail domain");
    }

    #[test]
    fn the_list_is_checked_as_it_is_read() {
        let bad = |d: &str| MailDomains::new(&[d.to_string()], Outside::Drop).unwrap_err();
        assert!(bad("*.nhs.uk").contains("write the domain alone (nhs.uk)"));
        assert!(bad("uk").contains("top-level domain alone"));
        assert!(bad("nhs .net").contains("not a valid domain name"));
        assert!(bad("nhs.net.").contains("ends with a dot"));
        assert!(MailDomains::new(&[], Outside::Drop)
            .unwrap_err()
            .contains("names no domain"));
        assert_eq!(Outside::parse("drop"), Some(Outside::Drop));
        assert_eq!(Outside::parse("refuse"), Some(Outside::Refuse));
        assert_eq!(Outside::parse("Drop"), None);
    }

    /// A DNS label (no "--" in it: IDNA keeps that for its own forms).
    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,6}(-[a-z0-9]{1,4})?"
    }

    proptest! {
        /// Any sub-domain of an allowed domain is allowed, in any case.
        #[test]
        fn sub_domains_of_an_allowed_domain_are_allowed(
            local in "[a-z0-9]{1,4}([._+-][a-z0-9]{1,4}){0,3}",
            labels in proptest::collection::vec(label(), 0..4),
            upper in any::<bool>(),
        ) {
            let m = nhs(Outside::Drop);
            let mut domain = labels.join(".");
            if !domain.is_empty() { domain.push('.'); }
            domain.push_str("nhs.uk");
            let address = format!("{local}@{domain}");
            let address = if upper { address.to_uppercase() } else { address };
            prop_assert_eq!(m.check_address(&address), Ok(()));
        }

        /// A domain that only ends with the allowed text, or holds it
        /// anywhere but at its end, is outside.
        #[test]
        fn look_alike_domains_are_outside(
            prefix in label(),
            suffix in label(),
            sep in prop_oneof![Just("."), Just("-")],
        ) {
            let m = nhs(Outside::Drop);
            let glued = format!("a@{prefix}nhs.uk");
            prop_assert!(m.check_address(&glued).is_err());
            let after = format!("a@nhs.uk{sep}{suffix}.com");
            prop_assert!(m.check_address(&after).is_err());
            let inside = format!("a@nhs.net.{suffix}.org");
            prop_assert!(m.check_address(&inside).is_err());
        }

        /// Whatever the input, the matcher answers (never panics), and an
        /// allowed address has exactly one @ and an allowed domain.
        #[test]
        fn any_text_gets_an_answer(v in "\\PC{0,40}", w in ".{0,40}") {
            let m = nhs(Outside::Drop);
            for s in [&v, &w] {
                if m.check_address(s).is_ok() {
                    prop_assert_eq!(s.matches('@').count(), 1);
                    let d = normalize_domain(s.split('@').nth(1).unwrap_or("")).unwrap();
                    prop_assert!(d == "nhs.net" || d == "nhs.uk" || d.ends_with(".nhs.net") || d.ends_with(".nhs.uk"));
                }
                let _ = m.check("proxyAddresses", s);
            }
        }
    }
}

//! Property tests (proptest): random inputs for the escaping, the template
//! language, the input-file parsers and the diff. Each property runs
//! `PROPTEST_CASES` cases (2,000 by default; CI runs more).

#![cfg(test)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::diff::attr_changes;
use crate::map::Template;
use crate::snapshot::Attrs;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(2000),
        ..ProptestConfig::default()
    }
}

/// Strings with the characters that matter here, and any other.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ ,+\"\\\\<>;=#*()\\x00a-zÀ-ÿ]{0,24}",
        any::<String>(),
        "[\\u{202e}\\u{0301}\\u{1F600} ,#=]{0,12}",
    ]
}

fn attrs() -> impl Strategy<Value = Attrs> {
    proptest::collection::btree_map("[a-e]", proptest::collection::vec("[a-z]{1,3}", 1..4), 0..5)
}

/// What the target holds after the changes `attr_changes` lists are made
/// (replace with the new values, or delete when there are none).
fn apply(before: &Attrs, after: &Attrs) -> Attrs {
    let mut now = before.clone();
    for (k, c) in attr_changes(before, after) {
        if c.new.is_empty() {
            now.remove(&k);
        } else {
            now.insert(k, c.new);
        }
    }
    now
}

fn as_sets(a: &Attrs) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    a.iter()
        .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
        .collect()
}

fn write_tmp(text: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("absync-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{}.toml", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&p, text).unwrap();
    p
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rdn_escaping_round_trips(v in nasty()) {
        let escaped = crate::dn::escape_value(&v);
        prop_assert_eq!(crate::dn::unescape_value(&escaped), v.clone());
        let dn = format!("CN={escaped},OU=x,DC=y");
        let rdns = crate::dn::split_rdns(&dn);
        prop_assert_eq!(rdns.len(), 3, "{}", dn);
        prop_assert_eq!(crate::dn::parent(&dn), "OU=x,DC=y");
        // The normal form is stable and ignores case.
        let n = crate::dn::normalize(&dn);
        prop_assert_eq!(crate::dn::normalize(&n), n.clone());
        prop_assert_eq!(crate::dn::normalize(&dn.to_ascii_uppercase()), crate::dn::normalize(&dn));
    }

    #[test]
    fn dn_normal_form_matches_its_definition(rdns in proptest::collection::vec((nasty(), nasty()), 0..4), raw in nasty()) {
        // The definition, spelled out with one string per step.
        fn reference(dn: &str) -> String {
            crate::dn::split_rdns(dn)
                .iter()
                .map(|rdn| match rdn.split_once('=') {
                    Some((attr, value)) => format!(
                        "{}={}",
                        attr.trim().to_lowercase(),
                        crate::dn::escape_value(&crate::dn::unescape_value(value.trim())).to_lowercase()
                    ),
                    None => rdn.to_lowercase(),
                })
                .collect::<Vec<_>>()
                .join(",")
        }
        let dn = rdns
            .iter()
            .map(|(a, v)| format!("{a}={}", crate::dn::escape_value(v)))
            .collect::<Vec<_>>()
            .join(",");
        for d in [dn.as_str(), raw.as_str(), "CN=Smith\\, Jr.,OU=NHS Directory,DC=sync,DC=test",
                  "cn=ΣΑΣ\\2C Ó,ou=Σx", " CN = \\20a\\5c\\ ,DC=x", "\\", "=,"] {
            prop_assert_eq!(crate::dn::normalize(d), reference(d), "{}", d);
        }
    }

    #[test]
    fn filter_escaping_always_yields_one_valid_equality_filter(v in nasty()) {
        let f = format!("(nhsOdsCode={})", ldap3::ldap_escape(v.as_str()));
        prop_assert!(ldap3::parse_filter(&f).is_ok(), "{}", f);
        // No unescaped parenthesis or asterisk survives inside the value.
        let inner = &f["(nhsOdsCode=".len()..f.len() - 1];
        prop_assert!(!inner.contains(['(', ')', '*']), "{}", f);
        // And the value comes back whole: RFC 4515 unescaping (each `\XX`
        // is one byte) gives the original.
        prop_assert_eq!(unescape_filter_value(inner), Some(v.clone()), "{}", f);
    }

    #[test]
    fn templates_never_panic_and_render_what_they_hold(t in nasty(), v in "[a-z]{1,8}") {
        if let Ok(tpl) = Template::parse(&t) {
            let entry = crate::scope::SourceEntry {
                anchor: "a".into(),
                dn: "uid=1".into(),
                org: "RX1".into(),
                attrs: [("sn".to_string(), vec![v.clone()])].into(),
            };
            let _ = tpl.render(&entry);
        }
        let tpl = Template::parse("{sn} x").unwrap();
        let entry = crate::scope::SourceEntry {
            anchor: "a".into(),
            dn: "uid=1".into(),
            org: "RX1".into(),
            attrs: [("sn".to_string(), vec![v.clone()])].into(),
        };
        prop_assert_eq!(tpl.render(&entry), format!("{v} x"));
    }

    #[test]
    fn the_input_file_parsers_never_panic(text in any::<String>()) {
        let p = write_tmp(&text);
        let _ = crate::config::Config::load(&p);
        let _ = crate::agreements::Agreements::load(&p, crate::agreements::today());
        let _ = crate::map::Mapping::load(&p);
    }

    #[test]
    fn parser_errors_name_the_file(text in "[a-z_]{1,8} = [\\[\\]\"0-9a-z]{0,6}\n") {
        let p = write_tmp(&text);
        if let Err(e) = crate::config::Config::load(&p) {
            prop_assert!(e.to_string().starts_with(&p.display().to_string()), "{}", e);
        }
        if let Err(e) = crate::agreements::Agreements::load(&p, crate::agreements::today()) {
            prop_assert!(e.to_string().starts_with(&p.display().to_string()), "{}", e);
        }
    }

    #[test]
    fn applying_the_planned_changes_to_the_old_state_gives_the_new_one(
        before in attrs(),
        after in attrs(),
    ) {
        prop_assert_eq!(as_sets(&apply(&before, &after)), as_sets(&after));
        prop_assert_eq!(
            attr_changes(&before, &after).is_empty(),
            as_sets(&before) == as_sets(&after)
        );
    }
}

/// RFC 4515 unescaping of an assertion value: `\XX` is the byte 0xXX;
/// `None` for a stray backslash or bytes that are not UTF-8.
fn unescape_filter_value(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

//! Property tests (proptest): random inputs for the escaping, the template
//! language, the input-file parsers, the attribute diff and the planner.
//! Each property runs `PROPTEST_CASES` cases (2,000 by default; CI runs
//! more), the planner's a tenth of that.

#![cfg(test)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::engine::diff::attr_changes;
use crate::engine::map::Template;
use crate::state::Attrs;

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

/// A DN as its parts: RDNs of one to three (attribute type, value)
/// assertions, the values with every character RFC 4514 treats specially.
fn dn_parts() -> impl Strategy<Value = Vec<Vec<(String, String)>>> {
    let value = prop_oneof![
        nasty(),
        "[ #]?[a-zA-Z\\u{e9}\\u{4e2d},+\"\\\\<>;=#\\x00 ]{0,10}[ ]?",
    ];
    let ava = ("(cn|CN|sn|ou|OU|dc|uid|givenName)", value);
    proptest::collection::vec(proptest::collection::vec(ava, 1..4), 0..4)
}

/// The DN as absync writes it: `escape_value`, RDNs joined by `,`.
fn absync_spelling(dn: &[Vec<(String, String)>]) -> String {
    dn.iter()
        .map(|rdn| {
            rdn.iter()
                .map(|(t, v)| format!("{t}={}", crate::dn::escape_value(v)))
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The same DN spelled another valid RFC 4514 way, each choice taken from
/// `pick`: type case, spaces around separators, AVA order, and per
/// character raw (where allowed), `\c` (where allowed) or hex pairs in
/// either case.
fn other_spelling(dn: &[Vec<(String, String)>], pick: &mut impl Iterator<Item = u8>) -> String {
    let mut next = || pick.next().unwrap_or(0);
    let mut rdns = Vec::new();
    for rdn in dn {
        let mut avas: Vec<String> = Vec::new();
        for (t, v) in rdn {
            let t: String = t
                .chars()
                .map(|c| {
                    if next().is_multiple_of(2) {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect();
            let space = |n: u8| if n.is_multiple_of(3) { " " } else { "" };
            let (s1, s2) = (space(next()), space(next()));
            avas.push(format!("{t}{s1}={s2}{}", spell_value(v, &mut next)));
        }
        let turn = usize::from(next()) % avas.len().max(1);
        avas.rotate_left(turn);
        let sep = if next().is_multiple_of(3) { " + " } else { "+" };
        rdns.push(avas.join(sep));
    }
    let sep = if next().is_multiple_of(3) { " , " } else { "," };
    rdns.join(sep)
}

fn spell_value(v: &str, next: &mut impl FnMut() -> u8) -> String {
    let chars: Vec<char> = v.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let special = ",+\"\\<>;=".contains(c);
        let must = special
            || c == '\0'
            || (i == 0 && (c == ' ' || c == '#'))
            || (i + 1 == chars.len() && c == ' ');
        let may_pair = special || c == ' ' || c == '#';
        let hex = |upper: bool| -> String {
            c.encode_utf8(&mut [0u8; 4])
                .bytes()
                .map(|b| {
                    if upper {
                        format!("\\{b:02X}")
                    } else {
                        format!("\\{b:02x}")
                    }
                })
                .collect()
        };
        match next() % 4 {
            0 | 1 if !must => out.push(c),
            2 if may_pair => {
                out.push('\\');
                out.push(c);
            }
            n => out.push_str(&hex(n % 2 == 0)),
        }
    }
    out
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
    fn every_spelling_of_a_dn_normalises_to_one_form(
        dn in dn_parts(),
        choices in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        // absync's spelling (escape_value), and another as AD or any RFC
        // 4514 writer may spell it: backslash-char or hex pairs, upper or
        // lower hex, any attribute type case, spaces around separators, the
        // AVAs of a multi-valued RDN in another order.
        let ours = absync_spelling(&dn);
        let theirs = other_spelling(&dn, &mut choices.iter().copied().cycle());
        let n = crate::dn::normalize(&ours);
        prop_assert_eq!(&crate::dn::normalize(&theirs), &n, "{} vs {}", ours, theirs);
        prop_assert!(crate::engine::diff::same_dn(&theirs, &ours));
        // The normal form is a fixed point.
        prop_assert_eq!(crate::dn::normalize(&n), n.clone());
        // And the structure survives: as many RDNs, the first one's value.
        prop_assert_eq!(crate::dn::split_rdns(&theirs).len(), dn.len().max(1));
        if let Some(first) = dn.first().filter(|r| r.len() == 1) {
            prop_assert_eq!(crate::dn::rdn_value(&theirs), first[0].1.clone());
        }
    }

    #[test]
    fn different_dns_normalise_differently(a in dn_parts(), b in dn_parts(), extra in nasty()) {
        // Equal normal forms exactly when the names are equal as AD
        // compares them: types and values without case, AVAs in any order.
        let key = |dn: &[Vec<(String, String)>]| -> Vec<Vec<(String, String)>> {
            dn.iter()
                .map(|rdn| {
                    let mut avas: Vec<_> = rdn
                        .iter()
                        .map(|(t, v)| (t.to_lowercase(), v.to_lowercase()))
                        .collect();
                    avas.sort();
                    avas
                })
                .collect()
        };
        let norm = |dn: &[Vec<(String, String)>]| crate::dn::normalize(&absync_spelling(dn));
        prop_assert_eq!(norm(&a) == norm(&b), key(&a) == key(&b), "{:?} vs {:?}", a, b);
        // A value changed in one place is another name.
        if let Some(rdn) = a.first() {
            let mut c = a.clone();
            c[0][0].1.push_str(&extra);
            c[0][0].1.push('x');
            prop_assert_ne!(norm(&a), norm(&c));
            // So is one value of a multi-valued RDN split off as its own RDN.
            if rdn.len() > 1 {
                let mut d = a.clone();
                let last = d[0].pop().unwrap_or_default();
                d.insert(0, vec![last]);
                prop_assert_ne!(norm(&a), norm(&d));
            }
        }
    }

    #[test]
    fn dn_normal_form_is_stable_on_any_input(raw in nasty(), dn in dn_parts()) {
        for d in [raw.clone(), absync_spelling(&dn), format!("cn={raw},{}", absync_spelling(&dn))] {
            let n = crate::dn::normalize(&d);
            prop_assert_eq!(crate::dn::normalize(&n), n.clone(), "{:?}", d);
            prop_assert_eq!(crate::dn::normalize(&d.to_ascii_uppercase()), crate::dn::normalize(&d.to_ascii_lowercase()));
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
            let entry = crate::engine::scope::SourceEntry {
                anchor: "a".into(),
                dn: "uid=1".into(),
                org: "RX1".into(),
                attrs: [("sn".to_string(), vec![v.clone()])].into(),
            };
            let _ = tpl.render(&entry);
        }
        let tpl = Template::parse("{sn} x").unwrap();
        let entry = crate::engine::scope::SourceEntry {
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
        let _ = crate::engine::map::Mapping::load(&p);
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

// ---------------------------------------------------------------------
// The planner: a run over a changed source, planned against the snapshot
// of the last run, ends where a first run over the new source would.

mod planner {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    use crate::agreements::{Agreement, Agreements};
    use crate::config::SafetyConfig;
    use crate::engine::diff::{same_dn, Kind, Planned, Planner, Unowned};
    use crate::engine::map::Mapping;
    use crate::engine::removals::{decide, Facts, Found, Rules};
    use crate::engine::scope::{Scope, Verdict};
    use crate::state::runs::Counts;
    use crate::state::{ObjectRow, Snapshot, StateError};

    const BASE: &str = "OU=Address Book,DC=example,DC=org";
    const RUN: i64 = 1;

    /// Two tie-breakers: the title (not granted for RX2), then the anchor.
    /// Values hold no digits and anchors do, so the last candidate is
    /// always free and no entry is refused for want of a name.
    const MAPPING: &str = r#"
object_class = ["top", "contact"]
[rdn]
attribute = "cn"
first_of = ["{givenName} {sn}", "{mail}"]
max_length = 20
tie_breakers = ["({title})", "({anchor})"]
[attributes.givenName]
copy = "givenName"
[attributes.sn]
copy = "sn"
[attributes.title]
copy = "title"
[attributes.mail]
copy = "mail"
transform = ["trim", "lower"]
[attributes.displayName]
template = "{givenName} {sn}"
"#;

    fn mapping() -> &'static Mapping {
        static M: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
        M.get_or_init(|| Mapping::load(&super::write_tmp(MAPPING)).unwrap())
    }

    fn day(y: i32) -> time::Date {
        time::Date::from_calendar_date(y, time::Month::January, 1).unwrap()
    }

    /// RX1 and RX2 are granted (RX2 without title); RZZ is not.
    fn agreements() -> Agreements {
        let agreement = |id: &str, org: &str, attrs: &[&str]| Agreement {
            id: id.into(),
            title: id.into(),
            organisations: [org.to_string()].into(),
            attributes: attrs.iter().map(|a| a.to_string()).collect(),
            valid_from: day(2020),
            valid_until: day(2030),
        };
        Agreements {
            all: vec![
                agreement("DSA-1", "RX1", &["givenname", "sn", "title", "mail"]),
                agreement("DSA-2", "RX2", &["givenname", "sn", "mail"]),
            ],
            day: day(2026),
            closed: Default::default(),
        }
    }

    fn source() -> crate::config::SourceConfig {
        crate::config::SourceConfig {
            endpoint: crate::ldap::Endpoint {
                urls: vec!["ldaps://127.0.0.1".into()],
                bind_dn: "cn=absync".into(),
                password: crate::secret::Secret::new("unused"),
                ca_file: None,
                transport: crate::ldap::Transport::Ldaps,
                timeout: std::time::Duration::from_secs(1),
                failback_after: crate::config::DEFAULT_FAILBACK,
                health: Default::default(),
            },
            base_dn: "ou=People,o=nhs".into(),
            filter: "(objectClass=person)".into(),
            org_attribute: "nhsOdsCode".into(),
            anchor_attribute: "entryUUID".into(),
            page_size: 100,
            status_attribute: "nhsEntryStatus".into(),
            leaver_values: vec!["leaver".into()],
            delta: Default::default(),
            organisations: None,
        }
    }

    /// A source entry.
    #[derive(Debug, Clone)]
    struct Person {
        anchor: String,
        org: &'static str,
        given: Vec<String>,
        sn: Vec<String>,
        title: Vec<String>,
        mail: Vec<String>,
        leaver: bool,
    }

    impl Person {
        fn raw(&self) -> ldap3::SearchEntry {
            let mut attrs: HashMap<String, Vec<String>> = HashMap::new();
            attrs.insert("entryUUID".into(), vec![self.anchor.clone()]);
            attrs.insert("nhsOdsCode".into(), vec![self.org.into()]);
            if self.leaver {
                attrs.insert("nhsEntryStatus".into(), vec!["Leaver".into()]);
            }
            for (name, v) in [
                ("givenName", &self.given),
                ("sn", &self.sn),
                ("title", &self.title),
                ("mail", &self.mail),
            ] {
                if !v.is_empty() {
                    attrs.insert(name.into(), v.clone());
                }
            }
            ldap3::SearchEntry {
                dn: format!("uid={},ou=People,o=nhs", self.anchor),
                attrs,
                bin_attrs: HashMap::new(),
            }
        }
    }

    /// Names that clash (also but for case, also once truncated), DN
    /// specials, blanks and control characters; never a digit.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => proptest::sample::select(vec![
                "Ann", "ann", "ANN", "Lee", "lee", "O'Brien", "Smith, Jr.", "#x", " Ann ",
                "", "  ", "Straße", "STRAẞE", "straße", "a\nb", "a\u{0}b", "=+;<>",
                "\\", "\"q\"", "Maximilianus", "Maximilianus Longus",
            ])
            .prop_map(String::from),
            // Compiled once: a `&str` strategy compiles its regex per value.
            1 => proptest::string::string_regex("[ ,+\"\\\\<>;=#a-cA-Cé]{0,6}").unwrap(),
        ]
    }

    fn values() -> impl Strategy<Value = Vec<String>> {
        prop_oneof![
            1 => Just(Vec::new()),
            6 => value().prop_map(|v| vec![v]),
            1 => proptest::collection::vec(value(), 2),
        ]
    }

    fn org() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec!["RX1", "RX1", "rx1", "RX2", "RZZ"])
    }

    fn person() -> impl Strategy<Value = Person> {
        (
            org(),
            values(),
            values(),
            values(),
            values(),
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(org, given, sn, title, mail, leaver)| Person {
                anchor: String::new(),
                org,
                given,
                sn,
                title,
                mail,
                leaver,
            })
    }

    /// What happens to an entry between two runs.
    #[derive(Debug, Clone)]
    enum Edit {
        Given(Vec<String>),
        /// A rename: the RDN is made of givenName and sn.
        Sn(Vec<String>),
        Title(Vec<String>),
        Mail(Vec<String>),
        /// To another organisation, granted or not.
        Move(&'static str),
        Leaver(bool),
        Remove,
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            1 => values().prop_map(Edit::Given),
            2 => values().prop_map(Edit::Sn),
            1 => values().prop_map(Edit::Title),
            1 => values().prop_map(Edit::Mail),
            1 => org().prop_map(Edit::Move),
            1 => any::<bool>().prop_map(Edit::Leaver),
            2 => Just(Edit::Remove),
        ]
    }

    const MAX_OLD: usize = 10;
    const MAX_ADDED: usize = 4;

    /// The source at the last run and now: old entries kept as they were
    /// (no edit), edited, removed, and new ones added, in a new order.
    fn states() -> impl Strategy<Value = (Vec<Person>, Vec<Person>)> {
        (
            proptest::collection::vec(person(), 0..=MAX_OLD),
            proptest::collection::vec(proptest::collection::vec(edit(), 0..3), MAX_OLD),
            proptest::collection::vec(person(), 0..=MAX_ADDED),
            proptest::collection::vec(any::<u16>(), MAX_OLD + MAX_ADDED),
        )
            .prop_map(|(mut old, edits, mut added, order)| {
                for (i, p) in old.iter_mut().enumerate() {
                    p.anchor = format!("{i:08x}-0000-4000-8000-000000000000");
                }
                for (i, p) in added.iter_mut().enumerate() {
                    p.anchor = format!("{:08x}-0000-4000-8000-000000000000", MAX_OLD + i);
                }
                let mut new: Vec<(u16, Person)> = Vec::new();
                'entries: for (i, (p, edits)) in old.iter().zip(&edits).enumerate() {
                    let mut p = p.clone();
                    for e in edits {
                        match e.clone() {
                            Edit::Given(v) => p.given = v,
                            Edit::Sn(v) => p.sn = v,
                            Edit::Title(v) => p.title = v,
                            Edit::Mail(v) => p.mail = v,
                            Edit::Move(o) => p.org = o,
                            Edit::Leaver(l) => p.leaver = l,
                            Edit::Remove => continue 'entries,
                        }
                    }
                    new.push((order[i], p));
                }
                for (i, p) in added.into_iter().enumerate() {
                    new.push((order[MAX_OLD + i], p));
                }
                new.sort_by_key(|(k, _)| *k);
                (old, new.into_iter().map(|(_, p)| p).collect())
            })
    }

    fn state(e: StateError) -> TestCaseError {
        TestCaseError::fail(e.to_string())
    }

    /// What one run came to.
    #[derive(Debug)]
    struct Outcome {
        /// Anchor → the row held after the run.
        rows: BTreeMap<String, ObjectRow>,
        /// Anchors in scope whose entry cannot become an object.
        rejected: BTreeSet<String>,
        /// Anchor → the names the mapping allows, as DNs.
        candidates: BTreeMap<String, Vec<String>>,
        /// Changes planned (deletes included; rejects not).
        changes: usize,
    }

    /// Commits the adds waiting, as the applier's window does.
    fn flush(snap: &Snapshot, pending: &mut Vec<ObjectRow>) -> Result<(), TestCaseError> {
        for row in pending.drain(..) {
            snap.commit(&row.anchor, Some(&row), RUN, &[])
                .map_err(state)?;
        }
        Ok(())
    }

    /// One run over `people`, as `engine::run_inner` makes it with a grace
    /// period of zero, every rail released and nothing in the target that
    /// absync does not own: scope, then the planner entry by entry, each
    /// change applied to the rows (and committed to the snapshot the way the
    /// applier does) before the next entry is planned; then the deletes
    /// `removals::decide` makes of the rows `unseen` names.
    fn sync_once(snap: &Snapshot, people: &[Person]) -> Result<Outcome, TestCaseError> {
        let mapping = mapping();
        let agreements = agreements();
        let scope = Scope::new(&source(), &agreements);
        let mut rows = BTreeMap::new();
        snap.for_each(|r| {
            rows.insert(r.anchor.clone(), r);
            Ok(())
        })
        .map_err(state)?;
        let held_at_start = rows.len() as u64;
        let mut out = Outcome {
            rows: BTreeMap::new(),
            rejected: BTreeSet::new(),
            candidates: BTreeMap::new(),
            changes: 0,
        };
        let mut planner = Planner::new(snap, mapping, BASE, None);
        let mut counts = Counts::default();
        let mut planned = BTreeSet::new();
        let mut pending = Vec::new();
        for p in people {
            let verdict = scope.judge(p.raw());
            if let Verdict::Hold { entry, .. } = &verdict {
                if let Ok(m) = mapping.map(entry) {
                    let dns = m
                        .rdn_candidates
                        .iter()
                        .map(|c| format!("cn={},{BASE}", crate::dn::escape_value(c)))
                        .collect();
                    out.candidates.insert(entry.anchor.clone(), dns);
                }
            }
            let change = match planner.plan_step(verdict, &mut counts).map_err(state)? {
                Planned::Done(change) => change,
                Planned::NeedsTarget(draft) => {
                    planner.set_unowned(Unowned::default());
                    planner.finish(draft, &mut counts)
                }
            };
            let Some(change) = change else { continue };
            let anchor = change.anchor.clone();
            prop_assert!(planned.insert(anchor.clone()), "{} planned twice", anchor);
            if let Kind::Add { after } = change.kind {
                prop_assert_eq!(&after.anchor, &anchor);
                prop_assert!(!rows.contains_key(&anchor), "{} added, but held", anchor);
                rows.insert(anchor, after.clone());
                pending.push(after);
                if pending.len() >= crate::engine::apply::ADD_WINDOW {
                    flush(snap, &mut pending)?;
                }
                out.changes += 1;
                continue;
            }
            // Changes keep their order: waiting adds go first.
            flush(snap, &mut pending)?;
            match change.kind {
                Kind::Update { before, after } => {
                    prop_assert_eq!(&after.anchor, &anchor);
                    prop_assert_eq!(rows.get(&anchor), Some(&before), "update of a stale row");
                    snap.commit(&anchor, Some(&after), RUN, &[])
                        .map_err(state)?;
                    rows.insert(anchor, after);
                    out.changes += 1;
                }
                Kind::Reject { why, .. } => {
                    prop_assert!(
                        why.starts_with("no value for the RDN"),
                        "{}: {}",
                        anchor,
                        why
                    );
                    out.rejected.insert(anchor);
                }
                other => prop_assert!(false, "{}: unexpected {:?}", anchor, other),
            }
        }
        flush(snap, &mut pending)?;
        // The delete step, decided as a run decides it: every unseen row
        // is deleted once `--allow-deletes` lets every rail pass.
        let unseen = planner.unseen(&agreements).map_err(state)?;
        let expected = unseen.len();
        let facts = Facts {
            judge_health: true,
            agreements_in_force: true,
            pulled_total: people.len() as u64,
            pulled_per_org: planner.pulled_per_org.clone(),
            granted: agreements.grants().keys().cloned().collect(),
            emptied: Default::default(),
            managed_at_start: held_at_start,
            hidden_at_start: 0,
            closed: Default::default(),
        };
        let safety = SafetyConfig {
            max_deletes: 0,
            max_delete_percent: 0.0,
            delete_grace: crate::period::Period::ZERO,
            quarantine_ou: None,
        };
        let rules = Rules {
            safety: &safety,
            mapping,
            allow_deletes: Some(u64::MAX),
            now: time::OffsetDateTime::now_utc(),
        };
        let decided = decide(unseen, &Found::new(), &facts, &rules);
        prop_assert!(decided.held.is_empty(), "held: {:?}", decided.held);
        prop_assert_eq!(decided.release.len(), expected);
        for change in decided.release {
            let anchor = change.anchor.clone();
            let Kind::Delete { before: row } = change.kind else {
                prop_assert!(false, "{}: not a delete: {:?}", anchor, change.kind);
                continue;
            };
            prop_assert!(
                planned.insert(anchor.clone()),
                "{} planned and deleted",
                anchor
            );
            prop_assert_eq!(rows.remove(&anchor), Some(row), "delete of a stale row");
            snap.commit(&anchor, None, RUN, &[]).map_err(state)?;
            out.changes += 1;
        }
        prop_assert_eq!(counts.conflicts, 0);

        // What any run leaves: the snapshot holds the rows the changes
        // made, every name once (as the directory compares names), and
        // every name one the mapping allows for its entry.
        let mut held = BTreeMap::new();
        snap.for_each(|r| {
            held.insert(r.anchor.clone(), r);
            Ok(())
        })
        .map_err(state)?;
        prop_assert_eq!(&held, &rows);
        let names: BTreeSet<String> = rows.values().map(|r| crate::dn::normalize(&r.dn)).collect();
        prop_assert_eq!(names.len(), rows.len(), "a name held twice: {:?}", rows);
        for (anchor, row) in &rows {
            if out.rejected.contains(anchor) {
                continue;
            }
            let Some(allowed) = out.candidates.get(anchor) else {
                prop_assert!(false, "{} is still held; its entry is not", anchor);
                continue;
            };
            prop_assert!(
                allowed.iter().any(|c| same_dn(c, &row.dn)),
                "{} is named {}, not one of {:?}",
                anchor,
                row.dn,
                allowed
            );
        }
        out.rows = rows;
        Ok(out)
    }

    /// A state directory per test process, opened once: each case empties
    /// it instead of creating a database (which costs more than the case).
    struct Dbs {
        incremental: Snapshot,
        fresh: Snapshot,
    }

    fn empty(s: &Snapshot) -> Result<(), TestCaseError> {
        s.conn
            .execute_batch("DELETE FROM objects; DELETE FROM intents;")
            .map_err(|e| TestCaseError::fail(e.to_string()))
    }

    fn dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("absync-fuzz-plan-{}", std::process::id()))
    }

    thread_local! {
        static DBS: Dbs = {
            let dir = dir();
            let _ = std::fs::remove_dir_all(&dir);
            Dbs {
                incremental: Snapshot::open(&dir.join("incremental")).unwrap(),
                fresh: Snapshot::open(&dir.join("fresh")).unwrap(),
            }
        };
    }

    /// A case is four whole runs against SQLite, about ten times what a
    /// case of the other properties costs: this one runs a tenth of their
    /// cases (5,000 when CI asks for 50,000). It is not written with
    /// `proptest!`, which would set the case count from `PROPTEST_CASES`
    /// again.
    fn config() -> ProptestConfig {
        let base = super::config();
        ProptestConfig {
            cases: (base.cases / 10).max(1),
            source_file: Some(file!()),
            test_name: Some(concat!(
                module_path!(),
                "::planning_a_changed_source_against_the_old_snapshot_ends_where_a_first_run_would"
            )),
            ..base
        }
    }

    #[test]
    fn planning_a_changed_source_against_the_old_snapshot_ends_where_a_first_run_would() {
        let mut runner = proptest::test_runner::TestRunner::new(config());
        if let Err(e) = runner.run(&states(), |(old, new)| {
            DBS.with(|dbs| check(dbs, &old, &new))
        }) {
            panic!("{e}\n{runner}");
        }
        let _ = std::fs::remove_dir_all(dir());
    }

    fn check(dbs: &Dbs, old: &[Person], new: &[Person]) -> Result<(), TestCaseError> {
        empty(&dbs.incremental)?;
        empty(&dbs.fresh)?;
        // The last run: a first run over the old source.
        let before = sync_once(&dbs.incremental, old)?;
        // This run, against its snapshot; and a first run over the new
        // source, for comparison.
        let after = sync_once(&dbs.incremental, new)?;
        let first = sync_once(&dbs.fresh, new)?;

        prop_assert_eq!(&after.rejected, &first.rejected);
        // An entry in scope that cannot become an object is seen: the
        // object held for it is kept as it was, not deleted.
        let mut expected: BTreeMap<String, ObjectRow> = first.rows.clone();
        for a in &after.rejected {
            if let Some(row) = before.rows.get(a) {
                expected.insert(a.clone(), row.clone());
            }
        }
        prop_assert_eq!(
            after.rows.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (anchor, row) in &after.rows {
            let want = &expected[anchor];
            if after.rejected.contains(anchor) {
                prop_assert_eq!(row, want);
                continue;
            }
            // Everything but the name is what a first run writes. The name
            // may differ: a first run takes the first free candidate; this
            // one keeps the current name while it is still a candidate,
            // and a name freed later in the run (by a rename or a delete)
            // is not taken by an entry planned before.
            let same = ObjectRow {
                dn: want.dn.clone(),
                ..row.clone()
            };
            prop_assert_eq!(&same, want);
            if let Some(old_row) = before.rows.get(anchor) {
                if after.candidates[anchor]
                    .iter()
                    .any(|c| same_dn(c, &old_row.dn))
                {
                    prop_assert_eq!(&row.dn, &old_row.dn, "{} renamed needlessly", anchor);
                }
            }
        }
        // And a second run over the same source has nothing to do.
        let again = sync_once(&dbs.incremental, new)?;
        prop_assert_eq!(again.changes, 0);
        prop_assert_eq!(&again.rows, &after.rows);
        Ok(())
    }
}

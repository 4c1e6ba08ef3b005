//! Server data is hostile: ldap3's parsers panic on malformed input
//! (`SearchEntry::construct`, and inside the library the message codec,
//! result and control parsing, the paged-results control). absync contains
//! that here, so a broken or malicious server ends the run with a clear
//! error (exit 2), never a panic:
//!
//! - entries are converted by [`entry`], which checks the shape and never
//!   panics (it replaces `SearchEntry::construct` at every call site);
//! - every other call into ldap3 runs under [`guard`], which turns a panic
//!   into an error, and the connection's driver task records the panic that
//!   ended it ([`Broken`]), so the operations it fails name the cause;
//! - [`quiet_ldap3_panics`] keeps those panics' messages off stderr: they
//!   reach the user as the error, not as "panicked at" and a backtrace.
//!   Panics anywhere else still print as before.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use futures_util::FutureExt;
use ldap3::asn1::{StructureTag, PL};
use ldap3::{ResultEntry, SearchEntry};

/// Why a connection's driver stopped, when a panic stopped it: set once,
/// read by every operation that fails afterwards.
pub(crate) type Broken = Arc<OnceLock<String>>;

/// Runs `f`; a panic inside it becomes `Err` with the panic's message.
pub(crate) async fn guard<F: Future>(f: F) -> Result<F::Output, String> {
    std::panic::AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|p| panic_text(p.as_ref()))
}

tokio::task_local! {
    /// The connection whose driver runs on this task.
    static DRIVING: Broken;
}

/// Drives a connection (ldap3's reader and writer of the socket) until it
/// ends. A panic in it (a malformed message) is recorded in `broken` by the
/// panic hook, before unwinding drops the connection's channels: an
/// operation that sees the connection end finds the cause.
pub(crate) async fn drive(conn: ldap3::LdapConnAsync, broken: Broken) {
    let driving = DRIVING.scope(broken, conn.drive());
    match std::panic::AssertUnwindSafe(driving).catch_unwind().await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "LDAP connection ended"),
        Err(p) => tracing::debug!(error = %panic_text(p.as_ref()), "LDAP connection ended"),
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    parse_failure(text)
}

fn parse_failure(text: Option<&str>) -> String {
    format!(
        "the LDAP library could not parse it ({})",
        text.unwrap_or("no detail")
    )
}

/// Whether a panic's source file is ldap3's (or its BER library's):
/// `…/ldap3-0.12.1/src/search.rs`, or a vendored `…/ldap3/src/…`.
fn is_ldap3_source(file: &str) -> bool {
    file.split(['/', '\\']).any(|part| {
        ["ldap3", "lber"]
            .iter()
            .any(|c| part == *c || part.starts_with(&format!("{c}-")))
    })
}

/// Installs, once, a panic hook that keeps panics raised inside ldap3 off
/// stderr (at debug level in the log instead): [`guard`] and the driver
/// task turn them into errors that name the server. Any other panic goes
/// to the hook that was in place. A panic in a connection's driver is
/// recorded for that connection here, before anything is dropped.
pub(crate) fn quiet_ldap3_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = DRIVING.try_with(|b| b.set(panic_text(info.payload())));
            match info.location() {
                Some(at) if is_ldap3_source(at.file()) => {
                    tracing::debug!(at = %at, "ldap3 could not parse a message from the server")
                }
                _ => previous(info),
            }
        }));
    });
}

/// A search result entry, converted as `SearchEntry::construct` does (the
/// same fields, values and binary split), but a malformed one is an `Err`
/// that says what is wrong, never a panic. Server text in it is quoted
/// with escapes.
pub fn entry(re: ResultEntry) -> Result<SearchEntry, String> {
    let parts = match re.0 {
        StructureTag {
            id: 4,
            payload: PL::C(parts),
            ..
        } => parts,
        _ => return Err("a search result entry that is not a SEQUENCE".into()),
    };
    let mut parts = parts.into_iter();
    let dn = text(parts.next(), || "the entry's DN".into())?;
    let attrs = constructed(parts.next())
        .ok_or_else(|| format!("entry {dn:?}: the attribute list is not a SEQUENCE"))?;
    let mut out = SearchEntry {
        dn,
        attrs: HashMap::new(),
        bin_attrs: HashMap::new(),
    };
    for attr in attrs {
        let at = || format!("entry {:?}", out.dn);
        let mut pair = constructed(Some(attr))
            .ok_or_else(|| format!("{}: an attribute is not a SEQUENCE", at()))?
            .into_iter();
        let name = text(pair.next(), || format!("{}: an attribute's name", at()))?;
        let values = constructed(pair.next())
            .ok_or_else(|| format!("{}: the values of {name:?} are not a SET", at()))?
            .into_iter()
            .map(|v| match v.payload {
                PL::P(bytes) => Ok(bytes),
                PL::C(_) => Err(format!(
                    "{}: a value of {name:?} is not an OCTET STRING",
                    at()
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        add_values(&mut out, name, values);
    }
    Ok(out)
}

/// As `construct` files them: all UTF-8 → `attrs` (a repeated name
/// replaces); otherwise → `bin_attrs`, the non-UTF-8 values first.
fn add_values(e: &mut SearchEntry, name: String, values: Vec<Vec<u8>>) {
    let (texts, binary): (Vec<_>, Vec<_>) = values
        .into_iter()
        .partition(|v| std::str::from_utf8(v).is_ok());
    let texts: Vec<String> = texts
        .into_iter()
        .filter_map(|v| String::from_utf8(v).ok())
        .collect();
    if binary.is_empty() {
        e.attrs.insert(name, texts);
    } else {
        let all = e.bin_attrs.entry(name).or_default();
        all.extend(binary);
        all.extend(texts.into_iter().map(String::into_bytes));
    }
}

fn constructed(tag: Option<StructureTag>) -> Option<Vec<StructureTag>> {
    match tag?.payload {
        PL::C(v) => Some(v),
        PL::P(_) => None,
    }
}

fn text(tag: Option<StructureTag>, what: impl Fn() -> String) -> Result<String, String> {
    match tag.map(|t| t.payload) {
        Some(PL::P(bytes)) => {
            String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", what()))
        }
        _ => Err(format!("{} is missing or not an OCTET STRING", what())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::asn1::TagClass;
    use proptest::prelude::*;

    fn p(bytes: &[u8]) -> StructureTag {
        StructureTag {
            class: TagClass::Universal,
            id: 4,
            payload: PL::P(bytes.to_vec()),
        }
    }

    fn c(id: u64, class: TagClass, items: Vec<StructureTag>) -> StructureTag {
        StructureTag {
            class,
            id,
            payload: PL::C(items),
        }
    }

    fn seq(items: Vec<StructureTag>) -> StructureTag {
        c(16, TagClass::Universal, items)
    }

    fn attr(name: &[u8], values: &[&[u8]]) -> StructureTag {
        seq(vec![
            p(name),
            c(
                17,
                TagClass::Universal,
                values.iter().map(|v| p(v)).collect(),
            ),
        ])
    }

    fn result_entry(items: Vec<StructureTag>) -> ResultEntry {
        ResultEntry::new(c(4, TagClass::Application, items))
    }

    /// ldap3's own conversion, its panic caught (and kept quiet).
    fn construct(re: ResultEntry) -> Option<SearchEntry> {
        quiet_ldap3_panics();
        std::panic::catch_unwind(|| SearchEntry::construct(re)).ok()
    }

    fn same(a: &SearchEntry, b: &SearchEntry) -> bool {
        a.dn == b.dn && a.attrs == b.attrs && a.bin_attrs == b.bin_attrs
    }

    #[test]
    fn a_well_formed_entry_converts_as_ldap3_does() {
        let items = vec![
            p(b"uid=a,ou=People"),
            seq(vec![
                attr(b"cn", &[b"Ann", b"Ann B"]),
                attr(b"jpegPhoto", &[b"ok", &[0xff, 0xfe]]),
                attr(b"mail", &[]),
            ]),
        ];
        let ours = entry(result_entry(items.clone())).unwrap();
        let theirs = construct(result_entry(items)).unwrap();
        assert!(same(&ours, &theirs), "{ours:?} / {theirs:?}");
        assert_eq!(ours.attrs["cn"], vec!["Ann", "Ann B"]);
        assert_eq!(
            ours.bin_attrs["jpegPhoto"],
            vec![vec![0xff, 0xfe], b"ok".to_vec()]
        );
    }

    #[test]
    fn malformed_entries_are_errors_that_say_what_is_wrong() {
        let cases: Vec<(Vec<StructureTag>, &str)> = vec![
            (vec![], "the entry's DN is missing"),
            (vec![p(&[0xff])], "the entry's DN is not UTF-8"),
            (
                vec![p(b"cn=x")],
                "entry \"cn=x\": the attribute list is not a SEQUENCE",
            ),
            (
                vec![p(b"cn=x"), p(b"junk")],
                "the attribute list is not a SEQUENCE",
            ),
            (
                vec![p(b"cn=x"), seq(vec![p(b"a")])],
                "an attribute is not a SEQUENCE",
            ),
            (
                vec![p(b"cn=\x1b[2J"), seq(vec![seq(vec![p(b"cn")])])],
                "entry \"cn=\\u{1b}[2J\": the values of \"cn\" are not a SET",
            ),
            (
                vec![
                    p(b"cn=x"),
                    seq(vec![seq(vec![p(b"cn"), seq(vec![seq(vec![])])])]),
                ],
                "a value of \"cn\" is not an OCTET STRING",
            ),
        ];
        for (items, want) in cases {
            let err = entry(result_entry(items.clone())).unwrap_err();
            assert!(err.contains(want), "{err} / {want}");
            assert!(
                construct(result_entry(items)).is_none(),
                "ldap3 panics on it: {want}"
            );
        }
        let not_an_entry = ResultEntry::new(p(b"x"));
        assert!(entry(not_an_entry).is_err());
    }

    #[test]
    fn a_panic_in_a_guarded_future_is_an_error_and_ldap3_is_recognised() {
        quiet_ldap3_panics();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(guard(async {
            SearchEntry::construct(result_entry(vec![]))
        }));
        assert_eq!(
            r.unwrap_err(),
            "the LDAP library could not parse it (element)"
        );
        assert_eq!(rt.block_on(guard(async { 7 })), Ok(7));
        assert!(is_ldap3_source(
            "/root/.cargo/registry/src/index.crates.io-1/ldap3-0.12.1/src/search.rs"
        ));
        assert!(is_ldap3_source("vendor/lber/src/parse.rs"));
        assert!(!is_ldap3_source("src/ldap/mod.rs"));
        assert!(!is_ldap3_source("/x/ldap3ish-1/src/a.rs"));
    }

    fn tag() -> impl Strategy<Value = StructureTag> {
        let leaf = prop_oneof![
            Just(p(b"cn")),
            Just(p(b"a b")),
            Just(p(&[0xff])),
            Just(p(b"")),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            (
                prop_oneof![Just(16u64), Just(17), Just(4)],
                prop::collection::vec(inner, 0..4),
            )
                .prop_map(|(id, items)| c(id, TagClass::Universal, items))
        })
    }

    proptest! {
        /// On any tree, `entry` fails exactly where ldap3 panics, and
        /// agrees with it everywhere else.
        #[test]
        fn entry_fails_where_construct_panics_and_agrees_elsewhere(
            items in prop::collection::vec(tag(), 0..3)
        ) {
            let ours = entry(result_entry(items.clone()));
            match (ours, construct(result_entry(items))) {
                (Ok(a), Some(b)) => prop_assert!(same(&a, &b), "{:?} / {:?}", a, b),
                (Err(_), None) => {}
                (a, b) => prop_assert!(false, "ours {:?}, ldap3 {:?}", a, b),
            }
        }
    }
}

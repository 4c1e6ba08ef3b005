//! Renders planned changes for `absync plan` and `absync sync --dry-run`:
//! a table for people, LDIF that `ldapmodify` applies as is, or JSON lines.

use std::fmt::Write;

use crate::config::TargetConfig;
use crate::engine::diff::add_attributes;
use crate::engine::diff::{attr_changes, same_dn, Change, Kind};
use crate::engine::map::Mapping;
use crate::text::Shown;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Ldif,
    Json,
}

/// What a plan in `format` starts with: LDIF declares its version
/// (RFC 2849), the other formats start with their first change.
pub fn header(format: Format) -> &'static str {
    match format {
        Format::Ldif => "version: 1\n\n",
        Format::Table | Format::Json => "",
    }
}

// The LDIF's text is written by `ldif_line` (values) and `ldif_comment`
// (comments) only: the one place it is escaped.

/// One LDIF line (RFC 2849): `attr: value` when the value is a
/// SAFE-STRING of printable ASCII, else `attr:: base64`: a value with a
/// control character (CR and LF included, so no value can start a line of
/// its own), a byte outside ASCII, a leading space, colon or `<`, or a
/// trailing space.
pub fn ldif_line(out: &mut String, attr: &str, value: &str) {
    let b = value.as_bytes();
    let safe = b.iter().all(|&c| (0x20..0x7f).contains(&c))
        && !matches!(b.first(), Some(b' ' | b':' | b'<'))
        && !value.ends_with(' ');
    if safe {
        let _ = writeln!(out, "{attr}: {value}");
    } else {
        use base64_lite::encode;
        let _ = writeln!(out, "{attr}:: {}", encode(b));
    }
}

/// One LDIF comment line: `# ` and the text as a terminal shows it
/// ([`Shown`]): a line break, a control, bidi or zero-width
/// character in a value is written escaped (`\n`, `\u{1b}`), so a
/// comment stays one line and cannot start a record.
fn ldif_comment(out: &mut String, text: std::fmt::Arguments<'_>) {
    let text = text.to_string();
    let _ = writeln!(out, "# {}", Shown(&text));
}

/// Minimal standard base64, for LDIF values (no need for a crate).
mod base64_lite {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(b: &[u8]) -> String {
        let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
        for chunk in b.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

pub fn render(change: &Change, format: Format, mapping: &Mapping, target: &TargetConfig) -> String {
    match format {
        Format::Table => table(change),
        Format::Ldif => ldif(change, mapping, target),
        Format::Json => json(change, mapping, target),
    }
}

/// A change as a table line for people; every value in it through
/// [`Shown`] (a control, bidi or zero-width character escaped).
fn table(c: &Change) -> String {
    let reason = Shown(&c.reason);
    match &c.kind {
        Kind::Add { after } => format!("add      {}  ({reason})\n", Shown(&after.dn)),
        Kind::Update { before, after } => {
            let mut s = String::new();
            if !same_dn(&before.dn, &after.dn) {
                let _ = writeln!(
                    s,
                    "rename   {}  ->  {}  ({reason})",
                    Shown(&before.dn),
                    Shown(&after.dn)
                );
            }
            let changes = attr_changes(&before.attrs, &after.attrs);
            if !changes.is_empty() {
                let names: Vec<&str> = changes.keys().map(String::as_str).collect();
                let names = names.join(", ");
                let _ = writeln!(s, "modify   {}  [{}]", Shown(&after.dn), Shown(&names));
            }
            s
        }
        Kind::Delete { before } => format!("delete   {}  ({reason})\n", Shown(&before.dn)),
        Kind::Hide { before, after } => {
            let (from, to) = (Shown(&before.dn), Shown(&after.dn));
            format!("hide     {from}  ->  {to}  ({reason})\n")
        }
        Kind::Withheld { change, why } => {
            let inner = table(change);
            format!(
                "withheld {}  [{}]\n",
                inner
                    .trim_end()
                    .trim_start_matches(|ch: char| ch.is_alphabetic())
                    .trim_start(),
                Shown(why)
            )
        }
        Kind::Conflict { dn, with, what, .. } => {
            let (dn, what, with) = (Shown(dn), Shown(what), Shown(with));
            format!("conflict {dn}  ({what}: {with})\n")
        }
        Kind::Reject { source_dn, why } => {
            format!("reject   {}  ({})\n", Shown(source_dn), Shown(why))
        }
    }
}

fn ldif(c: &Change, mapping: &Mapping, target: &TargetConfig) -> String {
    let mut s = String::new();
    match &c.kind {
        Kind::Add { after } => {
            ldif_comment(&mut s, format_args!("{} ({})", c.anchor, c.reason));
            ldif_line(&mut s, "dn", &after.dn);
            s.push_str("changetype: add\n");
            for (k, vs) in add_attributes(mapping, target, after) {
                for v in vs {
                    ldif_line(&mut s, &k, &v);
                }
            }
            s.push('\n');
        }
        Kind::Update { before, after } => {
            let mut dn = before.dn.clone();
            if !same_dn(&before.dn, &after.dn) {
                ldif_comment(&mut s, format_args!("{} ({})", c.anchor, c.reason));
                ldif_moddn(&mut s, &before.dn, &after.dn);
                dn = after.dn.clone();
            }
            let changes = attr_changes(&before.attrs, &after.attrs);
            let unhide = c.is_restore().then_some(mapping.hide.as_ref()).flatten();
            if let Some((attr, _)) = unhide {
                ldif_comment(&mut s, format_args!("{} (shown again)", c.anchor));
                ldif_line(&mut s, "dn", &dn);
                let _ = writeln!(s, "changetype: modify\ndelete: {attr}\n-\n");
            }
            if !changes.is_empty() {
                ldif_comment(&mut s, format_args!("{} (attributes changed)", c.anchor));
                ldif_line(&mut s, "dn", &dn);
                s.push_str("changetype: modify\n");
                for (k, ch) in changes {
                    if ch.new.is_empty() {
                        let _ = writeln!(s, "delete: {k}\n-");
                    } else {
                        let _ = writeln!(s, "replace: {k}");
                        for v in &ch.new {
                            ldif_line(&mut s, &k, v);
                        }
                        s.push_str("-\n");
                    }
                }
                s.push('\n');
            }
        }
        Kind::Delete { before } => {
            ldif_comment(&mut s, format_args!("{} ({})", c.anchor, c.reason));
            ldif_line(&mut s, "dn", &before.dn);
            s.push_str("changetype: delete\n\n");
        }
        Kind::Hide { before, after } => {
            ldif_comment(&mut s, format_args!("{} (hidden: {})", c.anchor, c.reason));
            if !same_dn(&before.dn, &after.dn) {
                ldif_moddn(&mut s, &before.dn, &after.dn);
            }
            if let Some((attr, value)) = &mapping.hide {
                ldif_line(&mut s, "dn", &after.dn);
                let _ = writeln!(s, "changetype: modify\nreplace: {attr}");
                ldif_line(&mut s, attr, value);
                s.push_str("-\n\n");
            }
        }
        Kind::Withheld { change, why } => {
            for line in ldif(change, mapping, target)
                .lines()
                .filter(|l| !l.is_empty())
            {
                ldif_comment(&mut s, format_args!("withheld ({why}): {line}"));
            }
            s.push('\n');
        }
        Kind::Conflict { dn, with, what, .. } => {
            ldif_comment(
                &mut s,
                format_args!("conflict, not applied: {dn}: {what}: {with}"),
            );
            s.push('\n');
        }
        Kind::Reject { source_dn, why } => {
            ldif_comment(
                &mut s,
                format_args!("rejected, not applied: {source_dn}: {why}"),
            );
            s.push('\n');
        }
    }
    s
}

/// A modrdn record; with `newsuperior` when the parent changes.
fn ldif_moddn(s: &mut String, from: &str, to: &str) {
    ldif_line(s, "dn", from);
    s.push_str("changetype: modrdn\n");
    ldif_line(s, "newrdn", crate::dn::first_rdn(to));
    s.push_str("deleteoldrdn: 1\n");
    let parent = crate::dn::parent(to);
    if crate::dn::normalize(&crate::dn::parent(from)) != crate::dn::normalize(&parent) {
        ldif_line(s, "newsuperior", &parent);
    }
    s.push('\n');
}

/// An add as a JSON line, serialised from the change's own fields: the same
/// text as the `serde_json::Value` of the other kinds (whose object keys
/// sort alphabetically, the order of these fields) without copying every
/// value into one first. Initial loads are nearly all adds.
#[derive(serde::Serialize)]
struct AddJson<'a> {
    agreements: &'a [String],
    anchor: &'a str,
    attributes: std::collections::BTreeMap<String, Vec<String>>,
    dn: &'a str,
    op: &'static str,
    reason: &'a str,
}

fn json(c: &Change, mapping: &Mapping, target: &TargetConfig) -> String {
    let add = match &c.kind {
        Kind::Add { after } => serde_json::to_string(&AddJson {
            agreements: &after.agreements,
            anchor: &c.anchor,
            attributes: add_attributes(mapping, target, after).into_iter().collect(),
            dn: &after.dn,
            op: "add",
            reason: &c.reason,
        })
        .ok(),
        _ => None,
    };
    let mut out = add.unwrap_or_else(|| {
        let v = json_value(c, mapping, target);
        // The same compact text as `Value`'s Display, which writes it
        // through the formatter piece by piece (several times the
        // instructions); a `Value` always serialises, so the fallback is
        // only for form's sake.
        serde_json::to_string(&v).unwrap_or_else(|_| v.to_string())
    });
    out.push('\n');
    out
}

fn json_value(c: &Change, mapping: &Mapping, target: &TargetConfig) -> serde_json::Value {
    match &c.kind {
        Kind::Add { after } => serde_json::json!({
            "op": "add", "anchor": c.anchor, "reason": c.reason, "dn": after.dn,
            "agreements": after.agreements,
            "attributes": add_attributes(mapping, target, after)
                .into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        }),
        Kind::Update { before, after } => serde_json::json!({
            "op": if c.is_restore() { "restore" } else { "update" }, "anchor": c.anchor, "reason": c.reason,
            "old_dn": before.dn, "dn": after.dn, "agreements": after.agreements,
            "changes": attr_changes(&before.attrs, &after.attrs),
        }),
        Kind::Delete { before } => serde_json::json!({
            "op": "delete", "anchor": c.anchor, "reason": c.reason, "dn": before.dn,
            "agreements": before.agreements,
        }),
        Kind::Hide { before, after } => serde_json::json!({
            "op": "hide", "anchor": c.anchor, "reason": c.reason, "old_dn": before.dn,
            "dn": after.dn, "agreements": before.agreements,
        }),
        Kind::Withheld { change, why } => {
            let inner: serde_json::Value =
                serde_json::from_str(json(change, mapping, target).trim()).unwrap_or_default();
            serde_json::json!({ "op": "withheld", "why": why, "change": inner })
        }
        Kind::Conflict {
            dn,
            with,
            what,
            agreements,
        } => serde_json::json!({
            "op": "conflict", "anchor": c.anchor, "dn": dn, "with": with, "error": what,
            "agreements": agreements,
        }),
        Kind::Reject { source_dn, why } => serde_json::json!({
            "op": "reject", "anchor": c.anchor, "source_dn": source_dn, "error": why,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64_lite::encode(b""), "");
        assert_eq!(base64_lite::encode(b"f"), "Zg==");
        assert_eq!(base64_lite::encode(b"fo"), "Zm8=");
        assert_eq!(base64_lite::encode(b"foo"), "Zm9v");
        assert_eq!(base64_lite::encode("Siân".as_bytes()), "U2nDom4=");
    }

    #[test]
    fn unsafe_ldif_values_are_base64() {
        let mut s = String::new();
        ldif_line(&mut s, "cn", "Siân");
        ldif_line(&mut s, "sn", " Lead");
        ldif_line(&mut s, "title", "Nurse");
        assert_eq!(s, "cn:: U2nDom4=\nsn:: IExlYWQ=\ntitle: Nurse\n");
    }

    #[test]
    fn control_characters_in_ldif_values_are_base64() {
        for v in [
            "a\u{1b}[2J",
            "a\tb",
            "a\u{7f}",
            "x\r\ndn: CN=Administrator",
            "a\nb",
        ] {
            let mut s = String::new();
            ldif_line(&mut s, "cn", v);
            assert!(s.starts_with("cn:: ") && s.lines().count() == 1, "{s:?}");
        }
        let mut s = String::new();
        ldif_line(&mut s, "dn", "CN=Smith\\2c J,OU=x");
        assert_eq!(s, "dn: CN=Smith\\2c J,OU=x\n");
    }

    #[test]
    fn a_comment_stays_one_line_whatever_its_text() {
        let anchor = "E1\r\n\ndn: CN=Administrator,CN=Users,DC=x\nchangetype: delete\n\u{1b}[2J";
        let mut s = String::new();
        ldif_comment(&mut s, format_args!("{anchor} (new entry)"));
        assert_eq!(s.lines().count(), 1, "{s:?}");
        assert!(s.starts_with("# E1\\r\\n\\ndn: CN=Administrator"), "{s:?}");
        assert!(!s.contains(['\r', '\u{1b}']), "{s:?}");
        assert!(s.ends_with("\\u{1b}[2J (new entry)\n"), "{s:?}");
    }

    #[test]
    fn an_ldif_plan_starts_with_its_version() {
        assert_eq!(header(Format::Ldif), "version: 1\n\n");
        assert_eq!(header(Format::Table), "");
        assert_eq!(header(Format::Json), "");
    }

    #[test]
    fn a_table_line_shows_hostile_values_escaped() {
        let c = Change {
            anchor: "a\u{1b}]0;x\u{7}".into(),
            reason: "new\nentry".into(),
            kind: Kind::Reject {
                source_dn: "uid=\u{1b}[2J\u{202E}nimda,ou=People".into(),
                why: "bad\u{200B}".into(),
            },
        };
        let line = table(&c);
        assert_eq!(
            line,
            "reject   uid=\\u{1b}[2J\\u{202e}nimda,ou=People  (bad\\u{200b})\n"
        );
    }

    #[test]
    fn an_add_renders_as_the_json_value_would() {
        let attributes: std::collections::BTreeMap<String, Vec<String>> = [
            ("cn".to_string(), vec!["Siân \"Ó\" Brien\\".to_string()]),
            ("objectClass".into(), vec!["top".into(), "contact".into()]),
            ("mail".into(), vec!["a@b".into()]),
        ]
        .into_iter()
        .collect();
        let agreements = vec!["DSA-1".to_string(), "DSA\t2".to_string()];
        let direct = serde_json::to_string(&AddJson {
            agreements: &agreements,
            anchor: "1b2c",
            attributes: attributes.clone(),
            dn: "cn=Siân \\22Ó\\22 Brien\\5c,OU=x",
            op: "add",
            reason: "new entry",
        })
        .unwrap();
        let value = serde_json::json!({
            "op": "add", "anchor": "1b2c", "reason": "new entry",
            "dn": "cn=Siân \\22Ó\\22 Brien\\5c,OU=x",
            "agreements": agreements, "attributes": attributes,
        });
        assert_eq!(direct, value.to_string());
    }
}

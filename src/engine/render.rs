//! Renders planned changes for `absync plan` and `absync sync --dry-run`:
//! a table for people, LDIF that `ldapmodify` applies as is, or JSON lines.

use std::fmt::Write;

use crate::config::TargetConfig;
use crate::engine::diff::add_attributes;
use crate::engine::diff::{attr_changes, same_dn, Change, Kind};
use crate::engine::map::Mapping;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Ldif,
    Json,
}

/// One LDIF line (RFC 2849), base64 when the value is not a safe string.
pub fn ldif_line(out: &mut String, attr: &str, value: &str) {
    let b = value.as_bytes();
    let safe = b
        .iter()
        .all(|&c| (1..=127).contains(&c) && c != b'\n' && c != b'\r')
        && !matches!(b.first(), Some(b' ' | b':' | b'<'))
        && !value.ends_with(' ');
    if safe {
        let _ = writeln!(out, "{attr}: {value}");
    } else {
        use base64_lite::encode;
        let _ = writeln!(out, "{attr}:: {}", encode(b));
    }
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

fn table(c: &Change) -> String {
    match &c.kind {
        Kind::Add { after } => format!("add      {}  ({})\n", after.dn, c.reason),
        Kind::Update { before, after } => {
            let mut s = String::new();
            if !same_dn(&before.dn, &after.dn) {
                let _ = writeln!(
                    s,
                    "rename   {}  ->  {}  ({})",
                    before.dn, after.dn, c.reason
                );
            }
            let changes = attr_changes(&before.attrs, &after.attrs);
            if !changes.is_empty() {
                let names: Vec<&str> = changes.keys().map(String::as_str).collect();
                let _ = writeln!(s, "modify   {}  [{}]", after.dn, names.join(", "));
            }
            s
        }
        Kind::Delete { before } => format!("delete   {}  ({})\n", before.dn, c.reason),
        Kind::Hide { before, after } => {
            format!("hide     {}  ->  {}  ({})\n", before.dn, after.dn, c.reason)
        }
        Kind::Withheld { change, why } => {
            let inner = table(change);
            format!(
                "withheld {}  [{why}]\n",
                inner
                    .trim_end()
                    .trim_start_matches(|ch: char| ch.is_alphabetic())
                    .trim_start()
            )
        }
        Kind::Conflict { dn, with, what, .. } => {
            format!("conflict {dn}  ({what}: {with})\n")
        }
        Kind::Reject { source_dn, why } => format!("reject   {source_dn}  ({why})\n"),
    }
}

fn ldif(c: &Change, mapping: &Mapping, target: &TargetConfig) -> String {
    let mut s = String::new();
    match &c.kind {
        Kind::Add { after } => {
            let _ = writeln!(s, "# {} ({})", c.anchor, c.reason);
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
                let _ = writeln!(s, "# {} ({})", c.anchor, c.reason);
                ldif_moddn(&mut s, &before.dn, &after.dn);
                dn = after.dn.clone();
            }
            let changes = attr_changes(&before.attrs, &after.attrs);
            let unhide = c.is_restore().then_some(mapping.hide.as_ref()).flatten();
            if let Some((attr, _)) = unhide {
                let _ = writeln!(s, "# {} (shown again)", c.anchor);
                ldif_line(&mut s, "dn", &dn);
                let _ = writeln!(s, "changetype: modify\ndelete: {attr}\n-\n");
            }
            if !changes.is_empty() {
                let _ = writeln!(s, "# {} (attributes changed)", c.anchor);
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
            let _ = writeln!(s, "# {} ({})", c.anchor, c.reason);
            ldif_line(&mut s, "dn", &before.dn);
            s.push_str("changetype: delete\n\n");
        }
        Kind::Hide { before, after } => {
            let _ = writeln!(s, "# {} (hidden: {})", c.anchor, c.reason);
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
                let _ = writeln!(s, "# withheld ({why}): {line}");
            }
            s.push('\n');
        }
        Kind::Conflict { dn, with, what, .. } => {
            let _ = writeln!(s, "# conflict, not applied: {dn}: {what}: {with}\n");
        }
        Kind::Reject { source_dn, why } => {
            let _ = writeln!(
                s,
                "# rejected, not applied: {}: {}\n",
                source_dn.replace('\n', " "),
                why
            );
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

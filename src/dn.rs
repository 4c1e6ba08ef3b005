//! Distinguished names (RFC 4514): escaping RDN values, splitting, and a
//! normal form for comparing DNs that two servers may spell differently
//! (`CN=Smith\, Jr.` and `cn=smith\2c jr.` are the same entry).

/// Escapes an attribute value for use in an RDN.
pub fn escape_value(value: &str) -> String {
    ldap3::dn_escape(value).into_owned()
}

/// Splits a DN into its RDNs at unescaped commas. Escapes are kept.
pub fn split_rdns(dn: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in dn.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            ',' => {
                out.push(dn[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < dn.len() || dn.is_empty() {
        out.push(dn[start..].trim());
    }
    out
}

/// Removes RFC 4514 escapes from an RDN value (`\,` and `\2c` alike).
pub fn unescape_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    out.push(bytes[i + 1]);
                    i += 2;
                }
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A canonical, case-folded form of a DN for equality and lookups: per RDN,
/// the attribute lower-cased, `=`, the value unescaped, escaped again the
/// one way `escape_value` does and lower-cased; RDNs joined by `,`.
///
/// Planning calls this several times per entry, so it builds the result in
/// one string and copies a value only when it holds an escape.
pub fn normalize(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    for (i, rdn) in split_rdns(dn).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match rdn.split_once('=') {
            Some((attr, value)) => {
                push_lowercase(&mut out, attr.trim());
                out.push('=');
                let value = value.trim();
                // Without a backslash, unescaping changes nothing.
                let unescaped: std::borrow::Cow<str> = if value.contains('\\') {
                    unescape_value(value).into()
                } else {
                    value.into()
                };
                push_lowercase(&mut out, &ldap3::dn_escape(unescaped));
            }
            None => push_lowercase(&mut out, rdn),
        }
    }
    out
}

/// Appends `s.to_lowercase()`, without the intermediate string when `s` is
/// ASCII (the usual case), where the two lower-case alike.
fn push_lowercase(out: &mut String, s: &str) {
    if s.is_ascii() {
        let start = out.len();
        out.push_str(s);
        out[start..].make_ascii_lowercase();
    } else {
        out.push_str(&s.to_lowercase());
    }
}

/// The parent of a DN (everything after the first RDN).
pub fn parent(dn: &str) -> String {
    let rdns = split_rdns(dn);
    rdns.get(1..).map(|r| r.join(",")).unwrap_or_default()
}

/// The first RDN of a DN, as written.
pub fn first_rdn(dn: &str) -> &str {
    split_rdns(dn).first().copied().unwrap_or("")
}

/// The value of a DN's first RDN, unescaped (`cn=Smith\, J,ou=x` → `Smith, J`).
pub fn rdn_value(dn: &str) -> String {
    unescape_value(first_rdn(dn).split_once('=').map(|(_, v)| v).unwrap_or(""))
}

/// True when `dn` is `base` or below it.
pub fn is_within(dn: &str, base: &str) -> bool {
    let (d, b) = (normalize(dn), normalize(base));
    d == b || d.ends_with(&format!(",{b}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(escape_value("Smith, Jr."), "Smith\\2c Jr.");
        assert_eq!(escape_value("#Hash"), "\\23Hash");
        assert_eq!(escape_value(" Lead"), "\\20Lead");
        assert_eq!(escape_value("Trail "), "Trail\\20");
        assert_eq!(
            escape_value("a+b\"c\\d<e>f;g=h"),
            "a\\2bb\\22c\\5cd\\3ce\\3ef\\3bg\\3dh"
        );
        assert_eq!(escape_value("Siân Ó Súilleabháin"), "Siân Ó Súilleabháin");
    }

    #[test]
    fn escape_and_unescape_round_trip() {
        for v in ["O'Brien, Siân", "#x", " y ", "a+b=c;d<e>\"\\", "Nguyễn"] {
            assert_eq!(unescape_value(&escape_value(v)), v);
        }
        assert_eq!(unescape_value("Smith\\, Jr."), "Smith, Jr.");
    }

    #[test]
    fn splits_at_unescaped_commas_only() {
        assert_eq!(
            split_rdns("CN=Smith\\, Jr.,OU=NHS Directory,DC=sync,DC=test"),
            vec!["CN=Smith\\, Jr.", "OU=NHS Directory", "DC=sync", "DC=test"]
        );
        assert_eq!(parent("CN=a\\,b,OU=x,DC=y"), "OU=x,DC=y");
    }

    #[test]
    fn normal_form_ignores_case_and_escape_spelling() {
        assert_eq!(
            normalize("CN=Smith\\, Jr.,OU=NHS Directory,DC=sync,DC=test"),
            normalize("cn=smith\\2c jr., ou=nhs directory,dc=SYNC,dc=test")
        );
        assert!(is_within("CN=x,OU=A,DC=b", "ou=a,dc=B"));
        assert!(!is_within("CN=x,OU=AB,DC=b", "ou=b,dc=B"));
    }
}

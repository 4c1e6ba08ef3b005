//! Distinguished names (RFC 4514): escaping RDN values, splitting, and a
//! normal form for comparing DNs that two servers may spell differently
//! (`CN=Smith\, Jr.` and `cn=smith\2c jr.` are the same entry).

/// Escapes an attribute value for use in an RDN.
pub fn escape_value(value: &str) -> String {
    ldap3::dn_escape(value).into_owned()
}

/// Splits a DN into its RDNs at unescaped commas. Escapes are kept; the
/// spaces around each RDN are not (an escaped space, `\ `, is).
pub fn split_rdns(dn: &str) -> Vec<&str> {
    split_unescaped(dn, b',')
}

/// Splits an RDN into its attribute-value assertions at unescaped `+`
/// (`cn=Ann+sn=Smith` is one RDN of two). Escapes are kept.
pub fn split_avas(rdn: &str) -> Vec<&str> {
    split_unescaped(rdn, b'+')
}

/// Splits `s` at each unescaped `sep`, each piece without the spaces
/// around it. A trailing separator ends the last piece, as before.
fn split_unescaped(s: &str, sep: u8) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            // The escaped byte is never a separator (a hex pair's digits
            // are not either). `sep` is ASCII, so slicing there is safe.
            i += 2;
            continue;
        }
        if bytes[i] == sep {
            out.push(trim_spaces(&s[start..i]));
            start = i + 1;
        }
        i += 1;
    }
    if start < s.len() || s.is_empty() {
        out.push(trim_spaces(&s[start..]));
    }
    out
}

/// `s` without the spaces RFC 4514 parsers ignore around `,` `+` and `=`;
/// an escaped trailing space (`Trail\ `) is part of the value and stays.
fn trim_spaces(s: &str) -> &str {
    let s = s.trim_start_matches(' ');
    let t = s.trim_end_matches(' ');
    let backslashes = t.bytes().rev().take_while(|b| *b == b'\\').count();
    if backslashes % 2 == 1 && t.len() < s.len() {
        &s[..t.len() + 1]
    } else {
        t
    }
}

/// Removes RFC 4514 escapes from an RDN value (`\,` and `\2c` alike). A
/// backslash and two hex digits is one byte; a backslash and any other
/// character is that character (`\+d` is `+d`, not the byte 0x0d).
pub fn unescape_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            match bytes.get(i + 1..i + 3) {
                Some(&[hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                    out.push(hex_digit(hi) << 4 | hex_digit(lo));
                    i += 3;
                }
                _ => {
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

/// The value of one ASCII hex digit (the caller has checked it is one).
fn hex_digit(b: u8) -> u8 {
    char::from(b).to_digit(16).map_or(0, |d| d as u8)
}

/// The one normal form every DN comparison goes through (RFC 4514, as
/// Active Directory compares names): per RDN, its attribute-value
/// assertions, each as the attribute type lower-cased, `=`, and the value
/// unescaped (`\+`, `\2B` and `\2b` alike), escaped again the one way
/// [`escape_value`] does and lower-cased (AD's naming attributes compare
/// without case); the assertions of a multi-valued RDN sorted and joined
/// by `+`; RDNs joined by `,`; the spaces around separators dropped. A
/// value written as `#` and BER hex is its string when it holds one.
/// So `CN=Ann Mid\+dle, OU=X` and `cn=ann mid\2bdle,ou=x` are one name.
///
/// Planning calls this several times per entry, so it builds the result in
/// one string and copies a value only when it holds an escape.
pub fn normalize(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    // Where the last non-empty RDN ends: `x,` is `x` (as it always was
    // here), and so are `x,,` and `x,+`.
    let mut end = 0;
    for (i, rdn) in split_rdns(dn).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let start = out.len();
        // Most RDNs hold one assertion: no list to build for them.
        if !rdn.contains('+') {
            push_ava(&mut out, rdn);
        } else {
            push_avas(&mut out, &split_avas(rdn));
        }
        if out.len() > start {
            end = out.len();
        }
    }
    out.truncate(end);
    out
}

/// Appends the normal form of a multi-valued RDN's assertions: each one's,
/// sorted, joined by `+`.
fn push_avas(out: &mut String, avas: &[&str]) {
    match avas {
        [one] => push_ava(out, one),
        many => {
            // An empty assertion (`a++b`) is no part of the name.
            let mut forms: Vec<String> = many
                .iter()
                .filter(|ava| !ava.is_empty())
                .map(|ava| {
                    let mut s = String::new();
                    push_ava(&mut s, ava);
                    s
                })
                .collect();
            forms.sort_unstable();
            out.push_str(&forms.join("+"));
        }
    }
}

/// Appends the normal form of one attribute-value assertion.
fn push_ava(out: &mut String, ava: &str) {
    let Some((attr, value)) = ava.split_once('=') else {
        push_lowercase(out, ava);
        return;
    };
    push_lowercase(out, trim_spaces(attr));
    out.push('=');
    let value = trim_spaces(value);
    if let Some(hex) = value.strip_prefix('#') {
        match ber_string(hex) {
            Some(s) => push_lowercase(out, &ldap3::dn_escape(s)),
            None if is_hex(hex) => push_lowercase(out, value),
            // Not a hex string: a `#` some writer left unescaped.
            None => push_lowercase(out, &ldap3::dn_escape(unescape_value(value))),
        }
        return;
    }
    // Without a backslash, unescaping changes nothing.
    let unescaped: std::borrow::Cow<str> = if value.contains('\\') {
        unescape_value(value).into()
    } else {
        value.into()
    };
    push_lowercase(out, &ldap3::dn_escape(unescaped));
}

/// True for a non-empty, even-length run of hex digits.
fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The string a `#` hex value holds (RFC 4514 2.4: the BER encoding of
/// the value), when it is one BER string (UTF8String, PrintableString or
/// IA5String) with a definite length; `None` otherwise.
fn ber_string(hex: &str) -> Option<String> {
    if !is_hex(hex) {
        return None;
    }
    let bytes: Vec<u8> = hex
        .as_bytes()
        .chunks(2)
        .map(|p| hex_digit(p[0]) << 4 | hex_digit(p[1]))
        .collect();
    let (&tag, rest) = bytes.split_first()?;
    if ![0x0c, 0x13, 0x16].contains(&tag) {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, body) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, b| l << 8 | usize::from(*b));
        (len, &rest[n..])
    };
    (body.len() == len)
        .then(|| std::str::from_utf8(body).ok().map(str::to_string))
        .flatten()
}

/// The ways one DN is spelled by the writers absync meets, for lookups in
/// stored text that cannot be normalised in place (the journal's indexed
/// `dn` column, compared without ASCII case): as given; as absync writes
/// it (hex pairs, [`escape_value`]); with a backslash before each special
/// character (`\+`, `\,`, `\#`), as Active Directory answers; and the
/// same with `;` and `=` as hex pairs, as Samba answers. Spaces around
/// separators are dropped; attribute types and value case are kept.
pub fn spellings(dn: &str) -> Vec<String> {
    let spell = |value: &dyn Fn(&str) -> String| {
        split_rdns(dn)
            .iter()
            .map(|rdn| {
                split_avas(rdn)
                    .iter()
                    .map(|ava| match ava.split_once('=') {
                        Some((t, v)) => {
                            format!(
                                "{}={}",
                                trim_spaces(t),
                                value(&unescape_value(trim_spaces(v)))
                            )
                        }
                        None => ava.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = vec![dn.to_string()];
    for s in [
        spell(&|v| escape_value(v)),
        spell(&|v| backslashed(v, ",+\"\\<>;=#")),
        spell(&|v| {
            backslashed(v, ",+\"\\<>#")
                .replace(';', "\\3B")
                .replace('=', "\\3D")
        }),
    ] {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// `value` with a backslash before each of `special`, a leading or
/// trailing space and a leading `#`; NUL as `\00`.
fn backslashed(value: &str, special: &str) -> String {
    let last = value.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(value.len() + 8);
    for (i, c) in value.chars().enumerate() {
        if c == '\0' {
            out.push_str("\\00");
            continue;
        }
        if special.contains(c) || (c == ' ' && (i == 0 || i == last)) || (c == '#' && i == 0) {
            out.push('\\');
        }
        out.push(c);
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
    let value = first_rdn(dn).split_once('=').map_or("", |(_, v)| v);
    unescape_value(trim_spaces(value))
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

    #[test]
    fn one_name_written_the_ways_ad_and_absync_write_it_is_one_name() {
        let same = |a: &str, b: &str| assert_eq!(normalize(a), normalize(b), "{a} vs {b}");
        // The case: `\+d` is a `+` and a `d`, not the byte 0x0d.
        same("CN=Ann Mid\\+dle,OU=X", "cn=Ann Mid\\2bdle,ou=x");
        same("CN=Ann Mid\\+dle,OU=X", "cn=ann mid\\2Bdle , ou = x");
        assert_ne!(normalize("CN=Ann Mid\\+dle"), normalize("CN=Ann Mi\\0dle"));
        // An escaped trailing space is the value's, not a separator's.
        same("CN=Trail\\ ,OU=X", "cn=trail\\20,ou=x");
        assert_eq!(first_rdn("CN=Trail\\ ,OU=X"), "CN=Trail\\ ");
        assert_eq!(rdn_value("CN=Trail\\ ,OU=X"), "Trail ");
        same("CN=\\ Lead", "cn=\\20lead");
        assert_ne!(normalize("CN=Trail\\ "), normalize("CN=Trail"));
        // A multi-valued RDN, in either order; an escaped `+` is no separator.
        same("CN=Ann+SN=Smith,OU=X", "sn=smith + cn=ann,ou=x");
        assert_ne!(
            normalize("CN=Ann+SN=Smith"),
            normalize("CN=Ann\\+SN\\=Smith")
        );
        // UTF-8 as hex pairs, either case; `#` escaped either way.
        same("CN=Si\\C3\\A2n", "cn=siân");
        same("CN=\\#Hash", "cn=\\23hash");
        // A `#` value that is not hex is a literal `#` left unescaped; one
        // that is BER is its string (UTF8String "Ann").
        same("CN=#Hash", "CN=\\#Hash");
        same("CN=#0c03416e6e", "cn=Ann");
        assert_ne!(normalize("CN=#0c03416e6e"), normalize("CN=\\230c03416e6e"));
        same("CN=#0402ABCD", "cn=#0402abcd");
        same("CN=a\\00b", "cn=A\\00B");
    }

    #[test]
    fn spellings_include_the_ways_ad_and_absync_write_a_name() {
        let all = spellings("CN=Ann Mid\\+dle;=, OU=X");
        for s in [
            "CN=Ann Mid\\+dle;=, OU=X",
            "CN=Ann Mid\\2bdle\\3b\\3d,OU=X",
            "CN=Ann Mid\\+dle\\;\\=,OU=X",
            "CN=Ann Mid\\+dle\\3B\\3D,OU=X",
        ] {
            assert!(all.contains(&s.to_string()), "{s} not in {all:?}");
        }
        assert!(
            all.iter().all(|s| normalize(s) == normalize(&all[0])),
            "{all:?}"
        );
        assert_eq!(spellings("cn=a,ou=x"), vec!["cn=a,ou=x"]);
    }
}

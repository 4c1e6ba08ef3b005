//! Characters that control, reorder or hide text, and the one way a value
//! is shown on a terminal ([`Shown`]).
//!
//! Source values and the journal are hostile: an escape sequence in a DN
//! clears a terminal, a right-to-left override (U+202E) shows a name
//! backwards, a zero-width space makes two names look the same. Tables
//! (`plan`, `journal show`, `status`, …) and LDIF comments write every
//! value through [`Shown`]; the mapping removes bidi controls and
//! zero-width characters from what it writes to AD
//! ([`strip_invisible`]).

use std::borrow::Cow;
use std::fmt;

/// Bidirectional controls: embeddings and overrides (U+202A–U+202E),
/// isolates (U+2066–U+2069), the marks U+200E, U+200F and U+061C.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Zero-width characters: space, non-joiner, joiner (U+200B–U+200D), word
/// joiner (U+2060), byte-order mark (U+FEFF).
pub fn is_zero_width(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// What a terminal must never get raw: control characters (C0, DEL, C1),
/// bidi controls, zero-width characters, and the line and paragraph
/// separators (U+2028, U+2029).
pub fn unsafe_on_terminal(c: char) -> bool {
    c.is_control() || is_bidi_control(c) || is_zero_width(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// A value as a terminal (or an LDIF comment) shows it: every character
/// [`unsafe_on_terminal`] escaped visibly, `\n`, `\r`, `\t` as such and
/// the others as `\u{1b}`; the rest as it is. One line, always: what
/// follows a value cannot be pushed onto a line of its own. A backslash is
/// left as it is (DNs are full of RFC 4514 escapes).
///
/// `format!("{}", Shown(dn))`, or [`shown`] for a string.
#[derive(Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    /// Honours width and alignment (`{:<14}`), as `str` does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.contains(unsafe_on_terminal) {
            return f.pad(self.0);
        }
        let mut out = String::with_capacity(self.0.len() + 16);
        let mut rest = self.0;
        while let Some(at) = rest.find(unsafe_on_terminal) {
            out.push_str(&rest[..at]);
            let mut chars = rest[at..].chars();
            // `find` returned the index of a character.
            let Some(c) = chars.next() else { break };
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c => out.extend(c.escape_unicode()),
            }
            rest = chars.as_str();
        }
        out.push_str(rest);
        f.pad(&out)
    }
}

/// [`Shown`] as a string; no copy when nothing needs escaping.
pub fn shown(s: &str) -> Cow<'_, str> {
    if s.contains(unsafe_on_terminal) {
        Cow::Owned(Shown(s).to_string())
    } else {
        Cow::Borrowed(s)
    }
}

/// Whether [`strip_invisible`] would change `s`.
pub fn has_invisible(s: &str) -> bool {
    s.contains(|c| is_bidi_control(c) || is_zero_width(c))
}

/// `s` without bidi controls and zero-width characters, as written to AD.
/// The joiners U+200C and U+200D are kept between two characters that are
/// neither ASCII, nor white space, nor invisible themselves: there they
/// are part of the writing (Persian, Indic scripts) or of an emoji
/// (👩‍⚕️); anywhere else (Latin names, an edge) they only hide a
/// difference, and go.
pub fn strip_invisible(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let visible = |c: Option<&char>| {
        c.is_some_and(|&c| {
            !c.is_ascii()
                && !c.is_whitespace()
                && !is_bidi_control(c)
                && !is_zero_width(c)
                && !c.is_control()
        })
    };
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        let joiner = matches!(c, '\u{200C}' | '\u{200D}');
        let keep = if joiner {
            i > 0 && visible(chars.get(i - 1)) && visible(chars.get(i + 1))
        } else {
            !is_bidi_control(c) && !is_zero_width(c)
        };
        if keep {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_bidi_and_zero_width_are_shown_escaped() {
        assert_eq!(
            shown("a\u{1b}[2Jb\u{202E}c\u{200B}d\u{7f}\u{9b}e"),
            "a\\u{1b}[2Jb\\u{202e}c\\u{200b}d\\u{7f}\\u{9b}e"
        );
        assert_eq!(shown("one\ntwo\r\tthree"), "one\\ntwo\\r\\tthree");
        assert_eq!(format!("[{:<6}]", Shown("a\u{7}")), "[a\\u{7}]");
        assert_eq!(format!("[{:<6}]", Shown("ab")), "[ab    ]");
        assert_eq!(
            shown("\u{2028}\u{2066}\u{061C}\u{FEFF}")
                .matches("\\u{")
                .count(),
            4
        );
    }

    #[test]
    fn ordinary_text_is_shown_as_it_is_uncopied() {
        for s in [
            "Siân Ó Súilleabháin",
            "CN=Smith\\2c J,OU=x",
            "محمد",
            "👩",
            "",
        ] {
            assert!(matches!(shown(s), Cow::Borrowed(b) if b == s), "{s}");
        }
    }

    #[test]
    fn invisible_characters_are_stripped_but_joiners_inside_a_script_stay() {
        assert_eq!(strip_invisible("\u{202E}lortnoc"), "lortnoc");
        assert_eq!(
            strip_invisible("Jo\u{200B}hn\u{2060} Sm\u{FEFF}ith\u{200F}"),
            "John Smith"
        );
        assert_eq!(
            strip_invisible("Jo\u{200D}hn \u{200C}Smith\u{200D}"),
            "John Smith"
        );
        // An emoji sequence and a Persian word keep their joiners.
        assert_eq!(
            strip_invisible("👩\u{200D}⚕\u{FE0F}"),
            "👩\u{200D}⚕\u{FE0F}"
        );
        assert_eq!(strip_invisible("می\u{200C}خواهم"), "می\u{200C}خواهم");
        assert!(!has_invisible("Siân"));
        assert!(has_invisible("a\u{2066}b"));
    }

    proptest::proptest! {
        #[test]
        fn nothing_unsafe_reaches_a_terminal(s in "\\PC*|[\\x00-\\x{a0}\\x{200b}-\\x{206f}\\x{feff}a ]*") {
            let out = shown(&s);
            proptest::prop_assert!(!out.contains(unsafe_on_terminal), "{:?}", out);
            let stripped = strip_invisible(&s);
            let left = stripped
                .contains(|c| is_bidi_control(c) || matches!(c, '\u{200B}' | '\u{2060}' | '\u{FEFF}'));
            proptest::prop_assert!(!left, "{:?}", stripped);
            proptest::prop_assert_eq!(strip_invisible(&stripped), stripped.clone());
        }
    }
}

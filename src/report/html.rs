//! The one place the report escapes a value for HTML (and the SVG inside
//! it): every text that comes from the journal, the configuration or the
//! user goes through [`Esc`] (or [`escape_html`]); markup is only ever
//! literal text in the renderer.

use std::fmt::{self, Write as _};

/// `s` escaped for HTML text and for a quoted attribute value: `&`, `<`,
/// `>`, `"` and `'` become entities; control characters other than tab and
/// newline are dropped (they cannot appear in a well-formed page).
pub fn escape_html(s: &str) -> String {
    Esc(s).to_string()
}

/// A value written escaped: `write!(out, "<td>{}</td>", Esc(dn))`.
#[derive(Debug, Clone, Copy)]
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                '\t' | '\n' => f.write_char(c)?,
                c if c.is_control() => {}
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_quotes_and_ampersands_are_escaped() {
        assert_eq!(
            escape_html(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(escape_html("Ó Súilleabháin\u{0}\u{1b}"), "Ó Súilleabháin");
        assert_eq!(escape_html("a\tb\nc"), "a\tb\nc");
    }
}

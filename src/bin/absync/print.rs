//! `Printer`: how the journal's answers look as a table for people, or as a
//! JSON array or CSV for tools; and the small text helpers tables share.

use std::io::{BufWriter, StdoutLock, Write};

use absync::state::audit;
use absync::state::journal::Stored;

use crate::cli::Output;

/// The CSV columns of `journal held`.
pub const HELD_CSV_HEADER: &str = "anchor,org,dn,agreements,hidden,attributes,since";

/// Writes query results as they come: a table for people, a JSON array or
/// CSV for tools. Nothing is held in memory but the current record.
pub struct Printer<W: Write> {
    format: Output,
    out: W,
    count: u64,
}

impl Printer<BufWriter<StdoutLock<'static>>> {
    /// A printer to standard output, buffered.
    pub fn stdout(format: Output, csv_header: &str) -> std::io::Result<Self> {
        Printer::new(format, BufWriter::new(std::io::stdout().lock()), csv_header)
    }
}

impl<W: Write> Printer<W> {
    pub fn new(format: Output, mut out: W, csv_header: &str) -> std::io::Result<Self> {
        match format {
            Output::Json => write!(out, "[")?,
            Output::Csv => writeln!(out, "{csv_header}")?,
            Output::Table => {}
        }
        Ok(Printer {
            format,
            out,
            count: 0,
        })
    }

    fn json<T: serde::Serialize>(&mut self, item: &T) -> std::io::Result<()> {
        let sep = if self.count == 0 { "\n" } else { ",\n" };
        write!(self.out, "{sep}{}", serde_json::to_string_pretty(item)?)?;
        self.count += 1;
        Ok(())
    }

    pub fn record(&mut self, s: &Stored) -> std::io::Result<()> {
        match self.format {
            Output::Json => return self.json(s),
            Output::Csv => writeln!(self.out, "{}", audit::csv_line(s))?,
            Output::Table => {
                let r = &s.record;
                let agreements = if r.agreements.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", r.agreements.join(","))
                };
                writeln!(
                    self.out,
                    "{:>7}  {}  run {:<4} {:<8} {:<14} {}{}",
                    s.id,
                    short_time(&s.at),
                    r.run_id,
                    r.op,
                    r.outcome,
                    r.reason,
                    agreements
                )?;
                if let Some(dn) = &r.dn {
                    writeln!(self.out, "         {dn}")?;
                }
                let changes = audit::describe_changes(r);
                if !changes.is_empty() {
                    writeln!(self.out, "         {changes}")?;
                }
                if let Some(e) = &r.error {
                    writeln!(self.out, "         error: {e}")?;
                }
            }
        }
        self.count += 1;
        Ok(())
    }

    pub fn held(&mut self, h: &audit::Held) -> std::io::Result<()> {
        let hidden = h.state.hidden.is_some();
        match self.format {
            Output::Json => return self.json(h),
            Output::Csv => {
                let attrs = serde_json::to_string(&h.state.attrs)?;
                let fields = [
                    h.anchor.as_str(),
                    h.org.as_deref().unwrap_or(""),
                    h.state.dn.as_str(),
                    &h.state.agreements.join(";"),
                    if hidden { "hidden" } else { "" },
                    &attrs,
                    h.at.as_str(),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                writeln!(self.out, "{}", line.join(","))?;
            }
            Output::Table => {
                writeln!(
                    self.out,
                    "{}  {}  {}  [{}]{}",
                    h.anchor,
                    h.org.as_deref().unwrap_or(""),
                    h.state.dn,
                    h.state.agreements.join(","),
                    if hidden { "  (hidden)" } else { "" }
                )?;
                for (k, v) in &h.state.attrs {
                    writeln!(self.out, "    {k}: {}", v.join(" | "))?;
                }
            }
        }
        self.count += 1;
        Ok(())
    }

    /// Closes the JSON array and flushes; returns how many items were written.
    pub fn finish(mut self) -> std::io::Result<u64> {
        if self.format == Output::Json {
            writeln!(self.out, "{}]", if self.count == 0 { "" } else { "\n" })?;
        }
        self.out.flush()?;
        Ok(self.count)
    }
}

/// A timestamp to the second, as tables show it (`2024-05-01T09:30:00`).
pub fn short_time(rfc3339: &str) -> &str {
    first_chars(rfc3339, 19)
}

/// The first `n` characters of `text` (all of it if shorter).
pub fn first_chars(text: &str, n: usize) -> &str {
    match text.char_indices().nth(n) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// One CSV field, quoted (RFC 4180).
fn csv_field(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_time_keeps_the_first_nineteen_characters() {
        assert_eq!(
            short_time("2024-05-01T09:30:00.123456Z"),
            "2024-05-01T09:30:00"
        );
        assert_eq!(short_time("2024-05-01"), "2024-05-01");
        assert_eq!(first_chars("ééé", 2), "éé");
    }

    #[test]
    fn csv_fields_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(csv_field(r#"say "hi", then"#), r#""say ""hi"", then""#);
    }
}

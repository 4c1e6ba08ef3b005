//! `Printer`: how the journal's answers look as a table for people, or as a
//! JSON array or CSV for tools; and the small text helpers tables share.

use std::io::{BufWriter, StdoutLock, Write};

use absync::state::audit;
use absync::state::journal::Stored;
use absync::state::runs::Run;

use crate::cli::Output;

/// The CSV columns of `journal held`.
pub const HELD_CSV_HEADER: &str = "anchor,org,dn,agreements,hidden,attributes,since";

/// The CSV columns of `journal runs`.
pub const RUNS_CSV_HEADER: &str = "run,started,ended,seconds,mode,status,added,modified,renamed,deleted,hidden,restored,withheld,conflicts,failed,user,config_hash,mapping_hash,agreements_hash";

/// The CSV columns of `journal config-changes`.
pub const CONFIG_CHANGES_CSV_HEADER: &str =
    "run,at,changed,config_hash,mapping_hash,agreements_hash";

/// Writes query results as they come: a table for people, a JSON array or
/// CSV for tools. Nothing is held in memory but the current record.
/// The CSV columns of `journal agreement ID --at DAY`.
pub const TERMS_CSV_HEADER: &str = "id,title,on,in_force,valid_from,valid_until,organisations,attributes,recorded_at,recorded_by_run,agreements_file_hash";

/// One agreement's terms on a day, as the journal recorded them.
#[derive(serde::Serialize)]
pub struct Terms {
    pub id: String,
    pub title: String,
    pub on: String,
    pub in_force: bool,
    pub valid_from: String,
    pub valid_until: String,
    pub organisations: Vec<String>,
    pub attributes: Vec<String>,
    pub recorded_at: String,
    pub recorded_by_run: i64,
    pub file_hash: String,
}

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

    /// One item of the JSON array, as `to_string_pretty` writes it alone.
    fn json<T: serde::Serialize>(&mut self, item: &T) -> std::io::Result<()> {
        self.json_text(&serde_json::to_string_pretty(item)?)
    }

    /// One item of the JSON array, two spaces in, as `to_string_pretty`
    /// writes a whole list: how `journal runs` and `config-changes` have
    /// always printed theirs.
    fn json_in_list<T: serde::Serialize>(&mut self, item: &T) -> std::io::Result<()> {
        let item = serde_json::to_string_pretty(item)?;
        let lines: Vec<String> = item.lines().map(|l| format!("  {l}")).collect();
        self.json_text(&lines.join("\n"))
    }

    fn json_text(&mut self, item: &str) -> std::io::Result<()> {
        let sep = if self.count == 0 { "\n" } else { ",\n" };
        write!(self.out, "{sep}{item}")?;
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

    pub fn run(&mut self, r: &Run) -> std::io::Result<()> {
        let c = r.counts.clone().unwrap_or_default();
        match self.format {
            Output::Json => return self.json_in_list(r),
            Output::Csv => writeln!(
                self.out,
                "{},{},{},{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                r.id,
                r.started_at,
                r.ended_at.as_deref().unwrap_or_default(),
                r.seconds().unwrap_or(0.0),
                r.mode,
                csv_field(&r.status),
                c.added,
                c.modified,
                c.renamed,
                c.deleted,
                c.hidden,
                c.restored,
                c.withheld,
                c.conflicts,
                c.failed,
                r.unix_user,
                r.files.config,
                r.files.mapping,
                r.files.agreements
            )?,
            Output::Table => {
                let secs = r
                    .seconds()
                    .map(|v| format!("{v:.1}s"))
                    .unwrap_or_else(|| "-".into());
                writeln!(
                    self.out,
                    "run {:<5} {}  {:>7}  {:<5} {:<30} +{} ~{} >{} -{} hidden {} restored {} held {} conflicts {} failed {}  by {}",
                    r.id,
                    short_time(&r.started_at),
                    secs,
                    r.mode,
                    r.status,
                    c.added, c.modified, c.renamed, c.deleted, c.hidden, c.restored,
                    c.withheld, c.conflicts, c.failed, r.unix_user
                )?;
            }
        }
        self.count += 1;
        Ok(())
    }

    /// A run that started with other input files than the run before it;
    /// `changed` names which (config, mapping, agreements).
    pub fn config_change(&mut self, r: &Run, changed: &[&str]) -> std::io::Result<()> {
        let f = &r.files;
        match self.format {
            Output::Json => {
                let item = serde_json::json!({"run": r.id, "at": r.started_at, "changed": changed, "files": f});
                return self.json_in_list(&item);
            }
            Output::Csv => writeln!(
                self.out,
                "{},{},{},{},{},{}",
                r.id,
                r.started_at,
                csv_field(&changed.join(" ")),
                f.config,
                f.mapping,
                f.agreements
            )?,
            Output::Table => writeln!(
                self.out,
                "{}  run {:<5} changed: {:<28} config {} mapping {} agreements {}",
                short_time(&r.started_at),
                r.id,
                changed.join(", "),
                short_hash(&f.config),
                short_hash(&f.mapping),
                short_hash(&f.agreements),
            )?,
        }
        self.count += 1;
        Ok(())
    }

    /// An agreement's terms on a day.
    pub fn terms(&mut self, t: &Terms) -> std::io::Result<()> {
        match self.format {
            Output::Json => return self.json(t),
            Output::Csv => writeln!(
                self.out,
                "{},{},{},{},{},{},{},{},{},{},{}",
                csv_field(&t.id),
                csv_field(&t.title),
                t.on,
                t.in_force,
                t.valid_from,
                t.valid_until,
                csv_field(&t.organisations.join(" ")),
                csv_field(&t.attributes.join(" ")),
                t.recorded_at,
                t.recorded_by_run,
                t.file_hash
            )?,
            Output::Table => {
                let force = if t.in_force {
                    "in force"
                } else {
                    "NOT in force"
                };
                writeln!(self.out, "{} \"{}\"", t.id, t.title)?;
                writeln!(
                    self.out,
                    "  on {}: {force} (valid {} to {})",
                    t.on, t.valid_from, t.valid_until
                )?;
                writeln!(self.out, "  organisations: {}", t.organisations.join(", "))?;
                writeln!(self.out, "  attributes: {}", t.attributes.join(", "))?;
                writeln!(
                    self.out,
                    "  as recorded by run {} at {} (agreements file {})",
                    t.recorded_by_run,
                    short_time(&t.recorded_at),
                    short_hash(&t.file_hash)
                )?;
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

/// A file hash cut to twelve characters, as tables show it.
fn short_hash(hash: &str) -> &str {
    first_chars(hash, 12)
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
    use absync::state::runs::{Counts, FileHashes};

    fn run(id: i64, status: &str) -> Run {
        Run {
            id,
            started_at: "2024-05-01T09:30:00.123Z".into(),
            ended_at: Some("2024-05-01T09:30:02.623Z".into()),
            mode: "full".into(),
            status: status.into(),
            counts: Some(Counts {
                added: 3,
                ..Default::default()
            }),
            files: FileHashes {
                config: "c".repeat(64),
                mapping: "m".repeat(64),
                agreements: "a".repeat(64),
            },
            unix_user: "absync".into(),
            head_hash: None,
        }
    }

    fn printed(format: Output, print: impl Fn(&mut Printer<&mut Vec<u8>>)) -> String {
        let mut out = Vec::new();
        let mut p = Printer::new(format, &mut out, "header").unwrap();
        print(&mut p);
        p.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn runs_as_json_are_the_whole_list_pretty_printed() {
        for n in 0..3 {
            let runs: Vec<Run> = (1..=n).map(|i| run(i, "ok \"quoted\"")).collect();
            let streamed = printed(Output::Json, |p| {
                runs.iter().for_each(|r| p.run(r).unwrap())
            });
            let whole = serde_json::to_string_pretty(&runs).unwrap() + "\n";
            assert_eq!(streamed, whole, "{n} runs");
        }
    }

    #[test]
    fn config_changes_as_json_are_the_whole_list_pretty_printed() {
        let changes = [
            (run(1, "ok"), vec!["config", "mapping", "agreements"]),
            (run(2, "ok"), vec!["agreements"]),
        ];
        let streamed = printed(Output::Json, |p| {
            for (r, w) in &changes {
                p.config_change(r, w).unwrap();
            }
        });
        let whole: Vec<_> = changes
            .iter()
            .map(|(r, w)| serde_json::json!({"run": r.id, "at": r.started_at, "changed": w, "files": r.files}))
            .collect();
        assert_eq!(
            streamed,
            serde_json::to_string_pretty(&whole).unwrap() + "\n"
        );
    }

    #[test]
    fn a_run_as_csv_quotes_only_its_status() {
        let csv = printed(Output::Csv, |p| p.run(&run(7, "say \"hi\"")).unwrap());
        let line = format!(
            "7,2024-05-01T09:30:00.123Z,2024-05-01T09:30:02.623Z,2.5,full,\"say \"\"hi\"\"\",3,0,0,0,0,0,0,0,0,absync,{},{},{}",
            "c".repeat(64),
            "m".repeat(64),
            "a".repeat(64)
        );
        assert_eq!(csv, format!("header\n{line}\n"));
    }

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

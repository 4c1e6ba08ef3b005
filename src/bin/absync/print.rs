//! `Printer`: how the journal's answers look as a table for people, or as a
//! JSON array or CSV for tools; the CSV columns of each answer; and the
//! small text helpers tables share. CSV goes through `csv_out`; every value
//! in a table through [`Shown`] (control, bidi and zero-width characters
//! escaped: a DN cannot clear the screen or reverse a line).

use std::io::{BufWriter, Write};

use absync::engine::compliance::Finding;
use absync::state::audit;
use absync::state::journal::Stored;
use absync::state::runs::Run;
use absync::text::Shown;

use crate::cli::Output;
use crate::csv_out::Csv;

/// The CSV columns of a journal record (`journal show`, `history`,
/// `agreement`, `export`). `changes` holds the changes as JSON;
/// `changed_attributes` names the attributes changed, space-separated.
pub const RECORD_CSV_HEADER: [&str; 15] = [
    "id",
    "at",
    "run",
    "op",
    "outcome",
    "reason",
    "anchor",
    "org",
    "dn",
    "old_dn",
    "agreements",
    "changes",
    "error",
    "hash",
    "changed_attributes",
];

/// The first CSV columns of `journal held`; one `attr:NAME` column per
/// attribute follows (see [`held_csv_header`]).
pub const HELD_CSV_HEADER: [&str; 7] = [
    "anchor",
    "org",
    "dn",
    "agreements",
    "hidden",
    "attributes",
    "since",
];

/// The CSV columns of `absync audit`.
pub const FINDINGS_CSV_HEADER: [&str; 8] = [
    "class",
    "violation",
    "org",
    "anchor",
    "dn",
    "agreements",
    "reason",
    "attributes",
];

/// The CSV columns of `journal runs`.
pub const RUNS_CSV_HEADER: [&str; 19] = [
    "run",
    "started",
    "ended",
    "seconds",
    "mode",
    "status",
    "added",
    "modified",
    "renamed",
    "deleted",
    "hidden",
    "restored",
    "withheld",
    "conflicts",
    "failed",
    "user",
    "config_hash",
    "mapping_hash",
    "agreements_hash",
];

/// The CSV columns of `journal config-changes`.
pub const CONFIG_CHANGES_CSV_HEADER: [&str; 6] = [
    "run",
    "at",
    "changed",
    "config_hash",
    "mapping_hash",
    "agreements_hash",
];

/// The columns of `journal held` as CSV, for objects holding the
/// attributes `names` (sorted): the fixed ones, then `attr:NAME` each.
pub fn held_csv_header(names: &[String]) -> Vec<String> {
    HELD_CSV_HEADER
        .iter()
        .map(|c| c.to_string())
        .chain(names.iter().map(|n| format!("attr:{n}")))
        .collect()
}

/// The CSV columns of `journal agreement ID --at DAY`.
pub const TERMS_CSV_HEADER: [&str; 11] = [
    "id",
    "title",
    "on",
    "in_force",
    "valid_from",
    "valid_until",
    "organisations",
    "attributes",
    "recorded_at",
    "recorded_by_run",
    "agreements_file_hash",
];

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

/// Where the answers go, in the format asked for.
enum Sink<W: Write> {
    Table(W),
    Json(W),
    Csv(Box<Csv<W>>),
}

/// Writes query results as they come: a table for people, a JSON array or
/// CSV for tools. Nothing is held in memory but the current record.
pub struct Printer<W: Write> {
    sink: Sink<W>,
    count: u64,
}

impl Printer<BufWriter<crate::out::Stdout>> {
    /// A printer to standard output, buffered. `csv_header` and `bom` are
    /// for CSV only.
    pub fn stdout<H: AsRef<str>>(
        format: Output,
        csv_header: impl IntoIterator<Item = H>,
        bom: bool,
    ) -> std::io::Result<Self> {
        let out = BufWriter::new(crate::out::stdout());
        Printer::new(format, out, csv_header, bom)
    }
}

impl<W: Write> Printer<W> {
    pub fn new<H: AsRef<str>>(
        format: Output,
        mut out: W,
        csv_header: impl IntoIterator<Item = H>,
        bom: bool,
    ) -> std::io::Result<Self> {
        let sink = match format {
            Output::Json => {
                write!(out, "[")?;
                Sink::Json(out)
            }
            Output::Csv => Sink::Csv(Box::new(Csv::new(out, bom, csv_header)?)),
            Output::Table => Sink::Table(out),
        };
        Ok(Printer { sink, count: 0 })
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
        if let Sink::Json(out) = &mut self.sink {
            write!(out, "{sep}{item}")?;
        }
        self.count += 1;
        Ok(())
    }

    pub fn record(&mut self, s: &Stored) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Json(_) => return self.json(s),
            Sink::Csv(c) => c.row(record_cells(s))?,
            Sink::Table(out) => {
                let r = &s.record;
                let agreements = if r.agreements.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", r.agreements.join(","))
                };
                writeln!(
                    out,
                    "{:>7}  {}  run {:<4} {:<8} {:<14} {}{}",
                    s.id,
                    Shown(&short_time(&s.at)),
                    r.run_id,
                    Shown(&r.op),
                    Shown(&r.outcome),
                    Shown(&r.reason),
                    Shown(&agreements)
                )?;
                if let Some(dn) = &r.dn {
                    writeln!(out, "         {}", Shown(dn))?;
                }
                let changes = audit::describe_changes(r);
                if !changes.is_empty() {
                    writeln!(out, "         {}", Shown(&changes))?;
                }
                if let Some(e) = &r.error {
                    writeln!(out, "         error: {}", Shown(e))?;
                }
            }
        }
        self.count += 1;
        Ok(())
    }

    /// One object held. `names`: the attributes that have a CSV column (as
    /// given to [`held_csv_header`]); an object holding another one is an
    /// error, as the header is already written.
    pub fn held(&mut self, h: &audit::Held, names: &[String]) -> std::io::Result<()> {
        let hidden = h.state.hidden.is_some();
        match &mut self.sink {
            Sink::Json(_) => return self.json(h),
            Sink::Csv(c) => c.row(held_cells(h, names)?)?,
            Sink::Table(out) => {
                writeln!(
                    out,
                    "{}  {}  {}  [{}]{}",
                    Shown(&h.anchor),
                    Shown(h.org.as_deref().unwrap_or("")),
                    Shown(&h.state.dn),
                    Shown(&h.state.agreements.join(",")),
                    if hidden { "  (hidden)" } else { "" }
                )?;
                for (k, v) in &h.state.attrs {
                    writeln!(out, "    {}: {}", Shown(k), Shown(&v.join(" | ")))?;
                }
            }
        }
        self.count += 1;
        Ok(())
    }

    pub fn run(&mut self, r: &Run) -> std::io::Result<()> {
        let c = r.counts.clone().unwrap_or_default();
        match &mut self.sink {
            Sink::Json(_) => return self.json_in_list(r),
            Sink::Csv(out) => {
                let counts = [
                    c.added,
                    c.modified,
                    c.renamed,
                    c.deleted,
                    c.hidden,
                    c.restored,
                    c.withheld,
                    c.conflicts,
                    c.failed,
                ];
                let mut cells = vec![
                    r.id.to_string(),
                    r.started_at.clone(),
                    r.ended_at.clone().unwrap_or_default(),
                    format!("{:.1}", r.seconds().unwrap_or(0.0)),
                    r.mode.clone(),
                    r.status.clone(),
                ];
                cells.extend(counts.iter().map(|n| n.to_string()));
                cells.extend([
                    r.unix_user.clone(),
                    r.files.config.clone(),
                    r.files.mapping.clone(),
                    r.files.agreements.clone(),
                ]);
                out.row(cells)?;
            }
            Sink::Table(out) => {
                let secs = r
                    .seconds()
                    .map(|v| format!("{v:.1}s"))
                    .unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "run {:<5} {}  {:>7}  {:<5} {:<30} +{} ~{} >{} -{} hidden {} restored {} held {} conflicts {} failed {}  by {}",
                    r.id,
                    Shown(&short_time(&r.started_at)),
                    secs,
                    Shown(&r.mode),
                    Shown(&r.status),
                    c.added, c.modified, c.renamed, c.deleted, c.hidden, c.restored,
                    c.withheld, c.conflicts, c.failed, Shown(&r.unix_user)
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
        match &mut self.sink {
            Sink::Json(_) => {
                let item = serde_json::json!({"run": r.id, "at": r.started_at, "changed": changed, "files": f});
                return self.json_in_list(&item);
            }
            Sink::Csv(out) => out.row([
                r.id.to_string().as_str(),
                &r.started_at,
                &changed.join(" "),
                &f.config,
                &f.mapping,
                &f.agreements,
            ])?,
            Sink::Table(out) => writeln!(
                out,
                "{}  run {:<5} changed: {:<28} config {} mapping {} agreements {}",
                Shown(&short_time(&r.started_at)),
                r.id,
                changed.join(", "),
                Shown(short_hash(&f.config)),
                Shown(short_hash(&f.mapping)),
                Shown(short_hash(&f.agreements)),
            )?,
        }
        self.count += 1;
        Ok(())
    }

    /// An agreement's terms on a day.
    pub fn terms(&mut self, t: &Terms) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Json(_) => return self.json(t),
            Sink::Csv(out) => out.row([
                t.id.as_str(),
                &t.title,
                &t.on,
                &t.in_force.to_string(),
                &t.valid_from,
                &t.valid_until,
                &t.organisations.join(" "),
                &t.attributes.join(" "),
                &t.recorded_at,
                &t.recorded_by_run.to_string(),
                &t.file_hash,
            ])?,
            Sink::Table(out) => {
                let force = if t.in_force {
                    "in force"
                } else {
                    "NOT in force"
                };
                writeln!(out, "{} \"{}\"", Shown(&t.id), Shown(&t.title))?;
                writeln!(
                    out,
                    "  on {}: {force} (valid {} to {})",
                    Shown(&t.on),
                    Shown(&t.valid_from),
                    Shown(&t.valid_until)
                )?;
                let organisations = t.organisations.join(", ");
                writeln!(out, "  organisations: {}", Shown(&organisations))?;
                writeln!(out, "  attributes: {}", Shown(&t.attributes.join(", ")))?;
                writeln!(
                    out,
                    "  as recorded by run {} at {} (agreements file {})",
                    t.recorded_by_run,
                    Shown(&short_time(&t.recorded_at)),
                    Shown(short_hash(&t.file_hash))
                )?;
            }
        }
        self.count += 1;
        Ok(())
    }

    /// One object `absync audit` judged: its class and organisation, its
    /// DN, why, its anchor, and the attributes at issue with their values.
    pub fn finding(&mut self, f: &Finding) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Json(_) => return self.json(f),
            Sink::Csv(out) => out.row([
                f.class.label(),
                if f.violation { "yes" } else { "no" },
                f.org.as_deref().unwrap_or(""),
                f.anchor.as_deref().unwrap_or(""),
                &f.dn,
                &f.agreements.join(";"),
                &f.reason,
                &serde_json::to_string(&f.attributes)?,
            ])?,
            Sink::Table(out) => {
                let org = Shown(f.org.as_deref().unwrap_or("-"));
                writeln!(out, "{:<11}  {org:<5}  {}", f.class.label(), Shown(&f.dn))?;
                writeln!(out, "             {}", Shown(&f.reason))?;
                if let Some(a) = &f.anchor {
                    writeln!(out, "             anchor {}", Shown(a))?;
                }
                for (k, v) in &f.attributes {
                    writeln!(out, "             {}: {}", Shown(k), Shown(&v.join(" | ")))?;
                }
            }
        }
        self.count += 1;
        Ok(())
    }

    /// Closes the JSON array and flushes; returns how many items were written.
    pub fn finish(self) -> std::io::Result<u64> {
        match self.sink {
            Sink::Json(mut out) => {
                writeln!(out, "{}]", if self.count == 0 { "" } else { "\n" })?;
                out.flush()?;
            }
            Sink::Csv(mut out) => out.flush()?,
            Sink::Table(mut out) => out.flush()?,
        }
        Ok(self.count)
    }
}

/// A journal record as CSV cells, in the order of [`RECORD_CSV_HEADER`].
pub fn record_cells(s: &Stored) -> [String; 15] {
    let r = &s.record;
    let changes = if r.changes.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&r.changes).unwrap_or_default()
    };
    let names: Vec<&str> = r.changes.keys().map(String::as_str).collect();
    [
        s.id.to_string(),
        s.at.clone(),
        r.run_id.to_string(),
        r.op.clone(),
        r.outcome.clone(),
        r.reason.clone(),
        r.anchor.clone().unwrap_or_default(),
        r.org.clone().unwrap_or_default(),
        r.dn.clone().unwrap_or_default(),
        r.old_dn.clone().unwrap_or_default(),
        r.agreements.join(";"),
        changes,
        r.error.clone().unwrap_or_default(),
        s.hash.clone(),
        names.join(" "),
    ]
}

/// An object held as CSV cells, in the order of [`held_csv_header`]: the
/// attributes as JSON, then each in its column, several values joined
/// with ` | ` (as the table shows them).
fn held_cells(h: &audit::Held, names: &[String]) -> std::io::Result<Vec<String>> {
    if let Some(extra) = h
        .state
        .attrs
        .keys()
        .find(|k| names.binary_search(k).is_err())
    {
        return Err(std::io::Error::other(format!(
            "the journal changed while it was read ({} now holds {extra}, \
             which has no column); run the command again",
            h.anchor
        )));
    }
    let mut cells = vec![
        h.anchor.clone(),
        h.org.clone().unwrap_or_default(),
        h.state.dn.clone(),
        h.state.agreements.join(";"),
        if h.state.hidden.is_some() {
            "hidden"
        } else {
            ""
        }
        .to_string(),
        serde_json::to_string(&h.state.attrs)?,
        h.at.clone(),
    ];
    cells.extend(names.iter().map(|n| {
        h.state
            .attrs
            .get(n)
            .map(|v| v.join(" | "))
            .unwrap_or_default()
    }));
    Ok(cells)
}

/// A UTC timestamp to the second, as tables show it
/// (`2024-05-01T09:30:00Z`). The journal stores UTC; a time in another
/// offset, or not a time, is shown whole.
pub fn short_time(rfc3339: &str) -> String {
    let utc = rfc3339.ends_with('Z') || rfc3339.ends_with("+00:00");
    match rfc3339.get(..19) {
        Some(seconds) if utc && rfc3339.len() > 19 => format!("{seconds}Z"),
        _ => rfc3339.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use absync::state::journal::{AttrChange, Record};
    use absync::state::object::{Hidden, ObjectRow};
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
        printed_as(format, &RUNS_CSV_HEADER, print)
    }

    fn printed_as<H: AsRef<str>>(
        format: Output,
        header: &[H],
        print: impl Fn(&mut Printer<&mut Vec<u8>>),
    ) -> String {
        let mut out = Vec::new();
        let mut p = Printer::new(format, &mut out, header, false).unwrap();
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
    fn a_run_as_csv_quotes_every_field_and_ends_lines_in_crlf() {
        let csv = printed(Output::Csv, |p| p.run(&run(7, "say \"hi\"")).unwrap());
        let header = RUNS_CSV_HEADER.map(|c| format!("\"{c}\"")).join(",");
        let line = format!(
            "\"7\",\"2024-05-01T09:30:00.123Z\",\"2024-05-01T09:30:02.623Z\",\"2.5\",\"full\",\
             \"say \"\"hi\"\"\",\"3\",\"0\",\"0\",\"0\",\"0\",\"0\",\"0\",\"0\",\"0\",\"absync\",\
             \"{}\",\"{}\",\"{}\"",
            "c".repeat(64),
            "m".repeat(64),
            "a".repeat(64)
        );
        assert_eq!(csv, format!("{header}\r\n{line}\r\n"));
    }

    fn held(title: &str) -> audit::Held {
        let mut state = ObjectRow {
            anchor: "a-1".into(),
            dn: "CN=X,OU=T".into(),
            org: "RB6".into(),
            agreements: vec!["DSA-1".into(), "DSA-2".into()],
            ..Default::default()
        };
        state.attrs.insert("title".into(), vec![title.into()]);
        state
            .attrs
            .insert("otherTelephone".into(), vec!["1".into(), "2".into()]);
        audit::Held {
            record: 9,
            at: "2024-05-01T09:30:00Z".into(),
            anchor: "a-1".into(),
            org: Some("RB6".into()),
            state,
        }
    }

    /// Parses what the printer wrote, as a spreadsheet's CSV reader would.
    fn rows(text: &str) -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes())
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect()
    }

    #[test]
    fn objects_held_as_csv_have_a_column_per_attribute_with_formulas_neutralised() {
        let names = vec!["mail".to_string(), "otherTelephone".into(), "title".into()];
        let header = held_csv_header(&names);
        let mut hidden = held("Nurse");
        hidden.state.hidden = Some(Hidden {
            at: "2024-05-02T00:00:00Z".into(),
            reason: "leaver".into(),
        });
        let out = printed_as(Output::Csv, &header, |p| {
            p.held(&held("=HYPERLINK(\"http://evil\",\"x\")"), &names)
                .unwrap();
            p.held(&hidden, &names).unwrap();
        });
        let rows = rows(&out);
        assert_eq!(
            rows[0],
            [
                "anchor",
                "org",
                "dn",
                "agreements",
                "hidden",
                "attributes",
                "since",
                "attr:mail",
                "attr:otherTelephone",
                "attr:title"
            ]
        );
        assert_eq!(
            rows[1],
            [
                "a-1",
                "RB6",
                "CN=X,OU=T",
                "DSA-1;DSA-2",
                "",
                r#"{"otherTelephone":["1","2"],"title":["=HYPERLINK(\"http://evil\",\"x\")"]}"#,
                "2024-05-01T09:30:00Z",
                "",
                "1 | 2",
                "'=HYPERLINK(\"http://evil\",\"x\")"
            ]
        );
        assert_eq!(
            (rows[2][4].as_str(), rows[2][9].as_str()),
            ("hidden", "Nurse")
        );
    }

    #[test]
    fn an_object_with_an_attribute_the_header_lacks_is_an_error() {
        let mut out = Vec::new();
        let names = vec!["title".to_string()];
        let mut p = Printer::new(Output::Csv, &mut out, held_csv_header(&names), false).unwrap();
        let e = p.held(&held("Nurse"), &names).unwrap_err();
        assert!(e.to_string().contains("otherTelephone"), "{e}");
    }

    #[test]
    fn a_record_as_csv_names_the_attributes_it_changed() {
        let mut record = Record::new(3, "modify", "failed", "@attributes changed");
        record.dn = Some("-CN=X".into());
        for (k, new) in [("title", "+1"), ("mail", "a@b")] {
            record.changes.insert(
                k.into(),
                AttrChange {
                    old: vec![],
                    new: vec![new.into()],
                },
            );
        }
        let stored = Stored {
            id: 12,
            at: "2024-05-01T09:30:00Z".into(),
            record,
            prev_hash: "p".into(),
            hash: "h".into(),
        };
        let out = printed_as(Output::Csv, &RECORD_CSV_HEADER, |p| {
            p.record(&stored).unwrap()
        });
        let rows = rows(&out);
        assert_eq!(rows[0], RECORD_CSV_HEADER);
        let row = &rows[1];
        assert_eq!(
            (row[0].as_str(), row[3].as_str(), row[5].as_str()),
            ("12", "modify", "'@attributes changed")
        );
        assert_eq!(row[8], "'-CN=X");
        assert_eq!(row[14], "mail title");
        let changes: serde_json::Value = serde_json::from_str(&row[11]).unwrap();
        assert_eq!(changes["title"]["new"][0], "+1");
    }

    #[test]
    fn a_record_as_a_table_shows_hostile_values_escaped() {
        let mut record = Record::new(3, "add", "applied", "new entry\u{1b}[2J");
        record.dn = Some("CN=\u{202E}nimdA\u{1b}[8m,OU=x".into());
        record.anchor = Some("E1\ninjected".into());
        record.error = Some("server said \u{9b}31m\u{200B}".into());
        let stored = Stored {
            id: 12,
            at: "2024-05-01T09:30:00Z".into(),
            record,
            prev_hash: "p".into(),
            hash: "h".into(),
        };
        let table = printed(Output::Table, |p| p.record(&stored).unwrap());
        let raw: Vec<char> = table
            .chars()
            .filter(|&c| c != '\n' && absync::text::unsafe_on_terminal(c))
            .collect();
        assert!(raw.is_empty(), "{raw:?} in {table}");
        assert!(
            table.contains("CN=\\u{202e}nimdA\\u{1b}[8m,OU=x"),
            "{table}"
        );
        assert!(table.contains("new entry\\u{1b}[2J"), "{table}");
        assert!(
            table.contains("error: server said \\u{9b}31m\\u{200b}"),
            "{table}"
        );
        assert_eq!(table.lines().count(), 3, "{table}");
    }

    #[test]
    fn a_finding_as_table_csv_and_json() {
        use absync::engine::compliance::Class;
        let f = Finding {
            class: Class::NotOwned,
            violation: false,
            dn: "CN=Hand Made,OU=NHS,DC=t".into(),
            anchor: None,
            org: Some("RZZ".into()),
            agreements: vec![],
            reason: "not absync's, \"by hand\"".into(),
            attributes: [("company".to_string(), vec!["NHS RZZ".to_string()])].into(),
        };
        let table = printed(Output::Table, |p| p.finding(&f).unwrap());
        assert_eq!(
            table,
            "not owned    RZZ    CN=Hand Made,OU=NHS,DC=t\n             not absync's, \"by hand\"\n             company: NHS RZZ\n"
        );
        let csv = printed_as(Output::Csv, &FINDINGS_CSV_HEADER, |p| {
            p.finding(&f).unwrap()
        });
        assert_eq!(
            csv,
            "\"class\",\"violation\",\"org\",\"anchor\",\"dn\",\"agreements\",\"reason\",\"attributes\"\r\n\
             \"not owned\",\"no\",\"RZZ\",\"\",\"CN=Hand Made,OU=NHS,DC=t\",\"\",\"not absync's, \"\"by hand\"\"\",\"{\"\"company\"\":[\"\"NHS RZZ\"\"]}\"\r\n"
        );
        let json = printed(Output::Json, |p| p.finding(&f).unwrap());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["class"], "not_owned");
        assert_eq!(v[0]["attributes"]["company"][0], "NHS RZZ");
    }

    #[test]
    fn short_time_keeps_the_seconds_and_says_utc() {
        assert_eq!(
            short_time("2024-05-01T09:30:00.123456Z"),
            "2024-05-01T09:30:00Z"
        );
        assert_eq!(short_time("2024-05-01T09:30:00Z"), "2024-05-01T09:30:00Z");
        assert_eq!(
            short_time("2024-05-01T09:30:00+00:00"),
            "2024-05-01T09:30:00Z"
        );
        assert_eq!(
            short_time("2024-05-01T10:30:00+01:00"),
            "2024-05-01T10:30:00+01:00"
        );
        assert_eq!(short_time("2024-05-01"), "2024-05-01");
        assert_eq!(first_chars("ééé", 2), "éé");
    }
}

//! `journal report`: the journal of a period as one self-contained HTML
//! page for people who would rather look than read. Inline CSS, inline SVG
//! charts, no script, no URL: a Content-Security-Policy forbids the page
//! to load anything. Every value is escaped in one place
//! ([`html::Esc`]). Pure: it renders a [`ReportData`] gathered by
//! [`crate::state::report`] into what it is given; the binary writes the
//! file.

pub mod chart;
pub mod html;
mod sections;

use std::fmt::{self, Write};

use crate::state::report::ReportData;
use crate::state::verify::Verdict;
use html::Esc;

/// The sections, in order: their ids and headings.
pub const SECTIONS: [(&str, &str); 9] = [
    ("verification", "Verification"),
    ("changes-per-day", "Changes per day"),
    ("changes-per-agreement", "Changes per agreement"),
    ("deletes", "Deletes by reason"),
    ("rails", "Safety rails and overrides"),
    ("changes", "Configuration and agreement changes"),
    ("conflicts", "Open conflicts"),
    ("holdings", "Holdings per agreement"),
    ("compliance", "Compliance"),
];

/// The page may load nothing and run nothing; only its own inline styles
/// apply.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

const STYLE: &str = include_str!("report.css");

/// Writes the whole page.
pub fn render(data: &ReportData, out: &mut dyn Write) -> fmt::Result {
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>absync journal report {} to {}</title>\n<style>\n{STYLE}</style>\n</head>\n\
         <body>\n<main>\n",
        Esc(day(&data.from)),
        Esc(day(&data.to))
    )?;
    header(out, data)?;
    summary(out, data)?;
    sections::all(out, data)?;
    write!(
        out,
        "<footer><p>Made by <code>absync journal report</code> at {} UTC from the journal \
         alone. This page loads nothing from elsewhere and runs no script: it can be read \
         offline, printed, or kept with the evidence.</p></footer>\n</main>\n</body>\n</html>\n",
        Esc(&when(&data.generated_at))
    )
}

/// A journal time as a person reads it: `2026-11-24 08:28:02`.
fn when(t: &str) -> String {
    match t.get(..19) {
        Some(s) => s.replacen('T', " ", 1),
        None => t.to_string(),
    }
}

/// The day of a journal time.
fn day(t: &str) -> &str {
    t.get(..10).unwrap_or(t)
}

fn header(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    writeln!(
        out,
        "<header>\n<h1>absync journal report</h1>\n<p class=\"period\">Period \
         <strong>{}</strong> to <strong>{}</strong> (UTC, both included) \
         <span class=\"muted\">· made {} UTC</span></p>",
        Esc(&when(&data.from)),
        Esc(&when(&data.to)),
        Esc(&when(&data.generated_at))
    )?;
    if let Some(before) = data
        .pruned_before
        .as_deref()
        .filter(|b| *b > data.from.as_str())
    {
        writeln!(
            out,
            "<p class=\"note\">Records older than {} were pruned (retention): the period \
             starts with the first record kept.</p>",
            Esc(&when(before))
        )?;
    }
    out.write_str("<nav><ol>")?;
    for (id, heading) in SECTIONS {
        write!(out, "<li><a href=\"#{id}\">{}</a></li>", Esc(heading))?;
    }
    out.write_str("</ol></nav>\n</header>\n")
}

/// The verdict as a badge: its word and its class.
fn verdict_badge(v: &Verdict) -> (&'static str, &'static str) {
    match v {
        Verdict::Intact { .. } => ("intact", "ok"),
        Verdict::Broken { .. } => ("BROKEN", "bad"),
        Verdict::Unproven { .. } => ("NOT PROVEN", "warn"),
    }
}

/// The figures at a glance, each a link to its section.
fn summary(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    let sum =
        |m: &crate::state::report::PerDay| -> u64 { m.values().flat_map(|d| d.values()).sum() };
    let runs: u64 = data.runs.values().sum();
    let (word, class) = verdict_badge(&data.verdict);
    let compliance = data
        .compliance
        .as_ref()
        .map_or("none", |c| c.outcome.as_str());
    let cards: [(&str, String, &str); 9] = [
        ("verification", word.to_string(), "journal"),
        (
            "changes-per-day",
            data.records.to_string(),
            "records in the period",
        ),
        ("changes-per-day", runs.to_string(), "runs ended"),
        (
            "changes-per-day",
            sum(&data.by_op).to_string(),
            "changes to contacts",
        ),
        (
            "deletes",
            data.deletes.values().sum::<u64>().to_string(),
            "contacts deleted",
        ),
        (
            "rails",
            format!("{} / {}", data.rails.len(), data.overrides.len()),
            "rails fired / overrides",
        ),
        (
            "conflicts",
            data.conflicts.len().to_string(),
            "open conflicts",
        ),
        (
            "holdings",
            data.held.to_string(),
            "contacts held at the end",
        ),
        ("compliance", compliance.to_string(), "compliance check"),
    ];
    out.write_str("<section id=\"summary\" class=\"cards\">\n")?;
    for (i, (id, value, what)) in cards.iter().enumerate() {
        let extra = if i == 0 { class } else { "" };
        writeln!(
            out,
            "<a class=\"card {extra}\" href=\"#{id}\"><span class=\"v\">{}</span>\
             <span class=\"k\">{}</span></a>",
            Esc(value),
            Esc(what)
        )?;
    }
    out.write_str("</section>\n")
}

/// A table cell; every text is escaped when written.
enum Cell {
    Text(String),
    /// Text with commands between backticks (a message absync wrote).
    Prose(String),
    Code(String),
    /// A short hash, kept on one line.
    Hash(String),
    /// A count (grouped by thousands).
    Num(u64),
    /// A record or run number.
    Id(i64),
    /// A bar of this share of the widest (0 to 1).
    Bar(f64),
}

impl Cell {
    fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }
}

/// A table with these headings (a heading starting with `#` is numeric).
fn table(out: &mut dyn Write, headings: &[&str], rows: &[Vec<Cell>]) -> fmt::Result {
    out.write_str("<table>\n<thead><tr>")?;
    for h in headings {
        match h.strip_prefix('#') {
            Some(h) => write!(out, "<th class=\"num\">{}</th>", Esc(h))?,
            None => write!(out, "<th>{}</th>", Esc(h))?,
        }
    }
    out.write_str("</tr></thead>\n<tbody>\n")?;
    for row in rows {
        out.write_str("<tr>")?;
        for cell in row {
            match cell {
                Cell::Text(t) => write!(out, "<td>{}</td>", Esc(t))?,
                Cell::Prose(t) => {
                    out.write_str("<td>")?;
                    prose(out, t)?;
                    out.write_str("</td>")?;
                }
                Cell::Code(t) => write!(out, "<td class=\"code\"><code>{}</code></td>", Esc(t))?,
                Cell::Hash(t) => write!(out, "<td class=\"nowrap\"><code>{}</code></td>", Esc(t))?,
                Cell::Num(n) => write!(out, "<td class=\"num\">{}</td>", grouped(*n))?,
                Cell::Id(n) => write!(out, "<td class=\"num\">{n}</td>")?,
                Cell::Bar(share) if *share <= 0.0 => {
                    out.write_str("<td class=\"barcell\"></td>")?
                }
                Cell::Bar(share) => write!(
                    out,
                    "<td class=\"barcell\"><span class=\"bar\" style=\"width:{:.1}%\"></span></td>",
                    (share * 100.0).clamp(0.0, 100.0)
                )?,
            }
        }
        out.write_str("</tr>\n")?;
    }
    out.write_str("</tbody>\n</table>\n")
}

/// Text in which what is between backticks is set as code (a command).
fn prose(out: &mut dyn Write, text: &str) -> fmt::Result {
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            write!(out, "<code>{}</code>", Esc(part))?;
        } else {
            write!(out, "{}", Esc(part))?;
        }
    }
    Ok(())
}

/// A paragraph of [`prose`].
fn para(out: &mut dyn Write, class: &'static str, text: &str) -> fmt::Result {
    write!(out, "<p class=\"{class}\">")?;
    prose(out, text)?;
    writeln!(out, "</p>")
}

/// A count as people read it: `20,002`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;

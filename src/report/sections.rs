//! The report's sections, in the order of [`super::SECTIONS`].

use std::fmt::{self, Write};

use super::chart;
use super::html::Esc;
use super::{day, para, table, verdict_badge, when, Cell, SECTIONS};
use crate::state::report::{Capped, PerDay, ReportData};

/// The operations in the order (and colours) the charts give them.
const OPS: [&str; 10] = [
    "add", "modify", "rename", "hide", "restore", "delete", "conflict", "reject", "drift", "failed",
];

pub(super) fn all(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    let parts: [fn(&mut dyn Write, &ReportData) -> fmt::Result; 9] = [
        verification,
        changes_per_day,
        changes_per_agreement,
        deletes,
        rails,
        changes,
        conflicts,
        holdings,
        compliance,
    ];
    for ((id, heading), part) in SECTIONS.iter().zip(parts) {
        write!(out, "<section id=\"{id}\">\n<h2>{}</h2>\n", Esc(heading))?;
        part(out, data)?;
        out.write_str("</section>\n")?;
    }
    Ok(())
}

fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// "and N more", when a list was cut.
fn more<T>(out: &mut dyn Write, list: &Capped<T>, data: &ReportData) -> fmt::Result {
    if list.more == 0 {
        return Ok(());
    }
    let text = format!(
        "… and {} more, not listed here: `absync journal export --since {} --until {}` \
         has every record.",
        list.more,
        day(&data.from),
        day(&data.to)
    );
    para(out, "more", &text)
}

fn verification(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    let (word, class) = verdict_badge(&data.verdict);
    writeln!(
        out,
        "<p class=\"verdict\"><span class=\"badge {class}\">{}</span> {}</p>",
        Esc(word),
        Esc(&data.verdict.to_string())
    )?;
    let scope = if data.keys == 0 {
        "The verdict is the whole journal's as it is now, not only this period's. Signatures \
         were not checked (no --public-key given): the hash chain alone proves only that \
         nothing was changed by accident or by someone who did not recompute the hashes."
            .to_string()
    } else {
        format!(
            "The verdict is the whole journal's as it is now, not only this period's, with \
             its signatures checked against {} public key(s).",
            data.keys
        )
    };
    para(out, "note", &scope)?;
    let mut rows = Vec::new();
    if let Some((id, hash)) = &data.head {
        rows.push(vec![
            Cell::text("The journal's last record, now"),
            Cell::text(format!("record {id}")),
            Cell::Code(hash.clone()),
        ]);
    }
    match &data.signed {
        Some(s) => rows.push(vec![
            Cell::text(format!("Signed last at or before {}", when(&data.to))),
            Cell::text(format!(
                "record {} (run {}, signed {} UTC, key {})",
                s.head_id,
                s.run,
                when(&s.at),
                s.key
            )),
            Cell::Code(s.head_hash.clone()),
        ]),
        None => rows.push(vec![
            Cell::text("Signed last"),
            Cell::text("none at or before the period's end (no signing key configured then)"),
            Cell::text(""),
        ]),
    }
    table(out, &["Head", "Record", "Hash"], &rows)
}

/// A stacked bar chart of `per_day` with its figures in a table that
/// opens on demand, or a sentence when there is nothing to draw.
fn chart_of(
    out: &mut dyn Write,
    data: &ReportData,
    id: &str,
    per_day: &PerDay,
    preferred: &[&str],
) -> fmt::Result {
    let to = data.to.as_str().min(data.generated_at.as_str());
    let Some(bars) = chart::bars(per_day, &data.from, to, preferred) else {
        return para(
            out,
            "muted",
            "No changes to contacts were recorded in this period.",
        );
    };
    if bars.grain != chart::Grain::Day {
        let text = format!(
            "The period is long: one bar {} (narrowed to the days with records).",
            bars.grain.per().trim_start_matches("per ")
        );
        para(out, "note", &text)?;
    }
    chart::svg(out, id, &bars, "records")?;
    let mut headings: Vec<&str> = vec![bars.grain.axis()];
    let names: Vec<String> = bars.series.iter().map(|(n, _)| format!("#{n}")).collect();
    headings.extend(names.iter().map(String::as_str));
    headings.push("#total");
    let rows: Vec<Vec<Cell>> = bars
        .labels
        .iter()
        .zip(&bars.counts)
        .filter(|(_, c)| !c.is_empty())
        .map(|(label, c)| {
            let mut row = vec![Cell::text(label.clone())];
            row.extend(
                bars.series
                    .iter()
                    .map(|(n, _)| Cell::Num(c.get(n).copied().unwrap_or(0))),
            );
            row.push(Cell::Num(c.values().sum()));
            row
        })
        .collect();
    out.write_str("<details><summary>The figures</summary>\n")?;
    table(out, &headings, &rows)?;
    out.write_str("</details>\n")
}

fn changes_per_day(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    para(
        out,
        "intro",
        "Every record about one contact, by operation: added, modified, renamed, hidden \
         (grace period), restored, deleted; a conflict (another object holds the name), an \
         entry rejected as invalid, drift a full run repaired. A change Active Directory \
         refused counts as failed.",
    )?;
    chart_of(out, data, "ops", &data.by_op, &OPS)
}

fn changes_per_agreement(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    para(
        out,
        "intro",
        "The same records, by the data-sharing agreement that authorised each (a record \
         under two agreements counts for both; (none): a record no agreement covers, such \
         as an entry rejected before its agreements were known).",
    )?;
    chart_of(out, data, "agreements", &data.by_agreement, &[])
}

fn deletes(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    if data.deletes.is_empty() {
        return para(out, "muted", "No contact was deleted in this period.");
    }
    let mut by: Vec<(&String, &u64)> = data.deletes.iter().collect();
    by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let widest = by.first().map_or(1, |(_, n)| **n).max(1) as f64;
    let mut rows: Vec<Vec<Cell>> = by
        .iter()
        .map(|(reason, n)| {
            vec![
                Cell::text(reason.as_str()),
                Cell::Num(**n),
                Cell::Bar(**n as f64 / widest),
            ]
        })
        .collect();
    let total: u64 = data.deletes.values().sum();
    rows.push(vec![
        Cell::text("all reasons"),
        Cell::Num(total),
        Cell::text(""),
    ]);
    para(
        out,
        "intro",
        "Contacts deleted from Active Directory (or found already gone), by the reason the \
         journal gives.",
    )?;
    table(out, &["Reason", "#Deletes", ""], &rows)
}

fn rails(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    out.write_str("<h3>Rails that held deletes back</h3>\n")?;
    if data.rails.is_empty() {
        para(out, "muted", "No safety rail fired in this period.")?;
    } else {
        let rows: Vec<Vec<Cell>> = data
            .rails
            .items
            .iter()
            .map(|r| {
                vec![
                    Cell::text(when(&r.at)),
                    Cell::Id(r.run),
                    Cell::text(r.rail.as_str()),
                    Cell::Prose(r.message.clone()),
                ]
            })
            .collect();
        table(out, &["When (UTC)", "#Run", "Rail", "What it said"], &rows)?;
        more(out, &data.rails, data)?;
    }
    out.write_str("<h3>Overrides (<code>--allow-deletes</code>)</h3>\n")?;
    if data.overrides.is_empty() {
        return para(out, "muted", "No override was given in this period.");
    }
    let rows: Vec<Vec<Cell>> = data
        .overrides
        .items
        .iter()
        .map(|o| {
            let ids = format!(
                "uid {} / login uid {}",
                o.uid.map_or("?".to_string(), |u| u.to_string()),
                o.login_uid.map_or("?".to_string(), login_uid)
            );
            vec![
                Cell::text(when(&o.at)),
                Cell::Id(o.run),
                Cell::Code(o.allowed.clone()),
                Cell::text(o.by.as_str()),
                Cell::text(ids),
                Cell::text(o.result.as_str()),
            ]
        })
        .collect();
    let headings = [
        "When (UTC)",
        "#Run",
        "Override",
        "Given by",
        "Kernel ids",
        "Result",
    ];
    table(out, &headings, &rows)?;
    more(out, &data.overrides, data)
}

/// A login uid as the kernel gives it (4294967295: no login session).
fn login_uid(uid: u64) -> String {
    if uid == u64::from(u32::MAX) {
        "none".to_string()
    } else {
        uid.to_string()
    }
}

fn changes(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    out.write_str("<h3>Configuration, mapping and agreements files</h3>\n")?;
    if data.config.is_empty() {
        para(
            out,
            "muted",
            "No run in this period used files other than the run before it.",
        )?;
    } else {
        let rows: Vec<Vec<Cell>> = data
            .config
            .items
            .iter()
            .map(|c| {
                vec![
                    Cell::text(when(&c.at)),
                    Cell::Id(c.run),
                    Cell::text(c.changed.join(", ")),
                    Cell::Hash(short(&c.files.config)),
                    Cell::Hash(short(&c.files.mapping)),
                    Cell::Hash(short(&c.files.agreements)),
                ]
            })
            .collect();
        let headings = [
            "Run started (UTC)",
            "#Run",
            "Changed",
            "config",
            "mapping",
            "agreements",
        ];
        table(out, &headings, &rows)?;
        more(out, &data.config, data)?;
    }
    out.write_str("<h3>Agreement terms</h3>\n")?;
    terms(out, data)?;
    if !data.reloads.is_empty() {
        out.write_str("<h3>Service reloads</h3>\n")?;
        let rows: Vec<Vec<Cell>> = data
            .reloads
            .items
            .iter()
            .map(|n| vec![Cell::text(when(&n.at)), Cell::text(n.text.as_str())])
            .collect();
        table(out, &["When (UTC)", "What"], &rows)?;
        more(out, &data.reloads, data)?;
    }
    Ok(())
}

fn terms(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    if data.terms.is_empty() {
        return para(out, "muted", "No agreement's terms changed in this period.");
    }
    let mut rows = Vec::new();
    for t in &data.terms.items {
        for (i, (id, what)) in t.changes.iter().enumerate() {
            let (at, run, file) = if i == 0 {
                (when(&t.at), t.run.to_string(), short(&t.file_hash))
            } else {
                Default::default()
            };
            rows.push(vec![
                Cell::text(at),
                Cell::text(run),
                Cell::Hash(file),
                Cell::text(id.as_str()),
                Cell::text(what.as_str()),
            ]);
        }
    }
    let headings = ["Recorded (UTC)", "Run", "File", "Agreement", "What changed"];
    table(out, &headings, &rows)?;
    more(out, &data.terms, data)
}

fn conflicts(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    para(
        out,
        "intro",
        &format!(
            "People absync could not write at {} UTC because an object it does not own holds \
             the contact's name: the person's last record up to then is a conflict (a \
             conflict is journaled again on every run that meets it; a later change Active \
             Directory accepted closes it).",
            when(&data.to)
        ),
    )?;
    if data.conflicts.is_empty() {
        return para(out, "muted", "No conflict is open.");
    }
    let rows: Vec<Vec<Cell>> = data
        .conflicts
        .items
        .iter()
        .map(|c| {
            vec![
                Cell::text(when(&c.at)),
                Cell::Id(c.run),
                Cell::Code(c.anchor.clone()),
                Cell::text(c.dn.clone().unwrap_or_default()),
                Cell::Prose(c.error.clone().or(c.with.clone()).unwrap_or_default()),
            ]
        })
        .collect();
    let headings = ["Last met (UTC)", "#Run", "Anchor", "Name wanted", "Why"];
    table(out, &headings, &rows)?;
    more(out, &data.conflicts, data)
}

fn holdings(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    let held = match &data.holdings {
        Ok(held) => held,
        Err(why) => return para(out, "warn", why),
    };
    para(
        out,
        "intro",
        &format!(
            "{} contacts held in Active Directory at {} UTC, per agreement (a contact under \
             two agreements counts for both; hidden: in its grace period, still in AD).",
            data.held,
            when(&data.to)
        ),
    )?;
    if held.is_empty() {
        return Ok(());
    }
    let widest = held.iter().map(|h| h.objects).max().unwrap_or(1).max(1) as f64;
    let rows: Vec<Vec<Cell>> = held
        .iter()
        .map(|h| {
            let end = day(&data.to);
            let valid = match (&h.valid_from, &h.valid_until) {
                (Some(f), Some(u)) if u.as_str() < end => format!("{f} to {u} (ended)"),
                (Some(f), Some(u)) if f.as_str() > end => format!("{f} to {u} (not yet)"),
                (Some(f), Some(u)) => format!("{f} to {u}"),
                _ => "not in the terms recorded then".to_string(),
            };
            vec![
                Cell::text(h.agreement.as_str()),
                Cell::text(h.title.clone().unwrap_or_default()),
                Cell::text(valid),
                Cell::Num(h.objects),
                Cell::Num(h.hidden),
                Cell::Num(h.organisations),
                Cell::Bar(h.objects as f64 / widest),
            ]
        })
        .collect();
    let headings = [
        "Agreement",
        "Title",
        "Valid",
        "#Contacts",
        "#Hidden",
        "#Organisations",
        "",
    ];
    table(out, &headings, &rows)
}

fn compliance(out: &mut dyn Write, data: &ReportData) -> fmt::Result {
    let Some(c) = &data.compliance else {
        return para(
            out,
            "muted",
            "No compliance check recorded in this period: a full run records one (`absync sync \
             --full`, or the service's scheduled full runs); `absync audit` answers now but \
             records nothing.",
        );
    };
    let class = match c.outcome.as_str() {
        "ok" => "ok",
        "violation" => "bad",
        _ => "warn",
    };
    writeln!(
        out,
        "<p class=\"verdict\"><span class=\"badge {class}\">{}</span> the latest check in the \
         period, at {} UTC (run {}, record {}): {}</p>",
        Esc(&c.outcome),
        Esc(&when(&c.at)),
        c.run,
        c.record,
        Esc(&c.reason)
    )?;
    if c.figures.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<Cell>> = c
        .figures
        .iter()
        .map(|(k, v)| vec![Cell::text(k.as_str()), Cell::text(v.as_str())])
        .collect();
    table(out, &["Figure", "Value"], &rows)
}

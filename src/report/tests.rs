#![cfg(test)]
//! The page: every section, the charts, no script, no URL, and every
//! value escaped.

use std::collections::BTreeMap;

use super::*;
use crate::state::report::*;
use crate::state::runs::FileHashes;

const HOSTILE: &str = r#"<script>alert("x")</script> & 'q'"#;
const HOSTILE_ESCAPED: &str = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;";

fn capped<T>(items: Vec<T>) -> Capped<T> {
    Capped { items, more: 0 }
}

fn per_day(rows: &[(&str, &str, u64)]) -> PerDay {
    let mut out = PerDay::new();
    for (d, k, n) in rows {
        out.entry(d.to_string())
            .or_default()
            .insert(k.to_string(), *n);
    }
    out
}

/// A report in which every text a person or a directory could choose is
/// hostile.
fn hostile() -> ReportData {
    let h = HOSTILE.to_string();
    ReportData {
        from: "2026-03-01T00:00:00.000000Z".into(),
        to: "2026-03-07T23:59:59.999999Z".into(),
        generated_at: "2026-03-08T09:00:00.000000Z".into(),
        verdict: Verdict::Broken {
            record: 7,
            why: h.clone(),
        },
        keys: 1,
        head: Some((90, "ab".repeat(32))),
        pruned_before: Some("2026-03-02T00:00:00.000000Z".into()),
        signed: Some(SignedHead {
            record: 89,
            run: 3,
            head_id: 88,
            head_hash: "cd".repeat(32),
            at: "2026-03-06T10:00:00.000000Z".into(),
            key: h.clone(),
        }),
        records: 90,
        runs: BTreeMap::from([("ok".to_string(), 2), (h.clone(), 1)]),
        by_op: per_day(&[("2026-03-02", "add", 55), ("2026-03-04", "delete", 19)]),
        by_agreement: per_day(&[("2026-03-02", HOSTILE, 55), ("2026-03-04", "DSA-B", 19)]),
        deletes: BTreeMap::from([(h.clone(), 19)]),
        rails: capped(vec![Rail {
            record: 60,
            at: "2026-03-04T10:00:00.000000Z".into(),
            run: 2,
            rail: "threshold".into(),
            status: "stopped: deletion threshold".into(),
            message: h.clone(),
        }]),
        overrides: Capped {
            items: vec![Override {
                record: 70,
                at: "2026-03-05T10:00:00.000000Z".into(),
                run: 3,
                allowed: "--allow-deletes 19".into(),
                by: h.clone(),
                uid: Some(0),
                login_uid: Some(1000),
                result: "19 deletes released, 0 still held".into(),
            }],
            more: 3,
        },
        config: capped(vec![ConfigChange {
            run: 3,
            at: "2026-03-05T10:00:00.000000Z".into(),
            changed: vec!["agreements"],
            files: FileHashes {
                config: h.clone(),
                mapping: "m".repeat(64),
                agreements: "a".repeat(64),
            },
        }]),
        terms: capped(vec![TermsChange {
            record: 71,
            at: "2026-03-05T10:00:00.000000Z".into(),
            run: 3,
            file_hash: "f".repeat(64),
            changes: vec![(h.clone(), h.clone())],
        }]),
        reloads: capped(vec![Note {
            record: 72,
            at: "2026-03-05T11:00:00.000000Z".into(),
            text: h.clone(),
        }]),
        conflicts: capped(vec![Conflict {
            record: 80,
            at: "2026-03-06T10:00:00.000000Z".into(),
            run: 3,
            anchor: h.clone(),
            org: Some(h.clone()),
            dn: Some(format!("CN={h},OU=T")),
            with: None,
            error: Some(h.clone()),
        }]),
        holdings: Ok(vec![Holding {
            agreement: h.clone(),
            title: Some(h.clone()),
            valid_from: Some("2026-01-01".into()),
            valid_until: Some(h.clone()),
            objects: 36,
            hidden: 1,
            organisations: 2,
        }]),
        held: 36,
        compliance: Some(Compliance {
            record: 85,
            at: "2026-03-06T12:00:00.000000Z".into(),
            run: 4,
            outcome: h.clone(),
            reason: h.clone(),
            figures: vec![(h.clone(), "3".into())],
        }),
    }
}

fn page(data: &ReportData) -> String {
    let mut out = String::new();
    render(data, &mut out).unwrap();
    out
}

#[test]
fn every_hostile_value_comes_out_escaped() {
    let html = page(&hostile());
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains(HOSTILE));
    assert!(!html.contains("alert(\"x\")"));
    // Every place the value went (about 20), escaped the one way.
    assert!(html.matches(HOSTILE_ESCAPED).count() >= 18, "{html}");
    // The only elements are the renderer's own.
    let tags: std::collections::BTreeSet<&str> = html
        .split('<')
        .skip(1)
        .map(|t| t.split([' ', '>', '/', '\n']).next().unwrap_or(""))
        .collect();
    let allowed = [
        "", "!DOCTYPE", "a", "body", "circle", "code", "defs", "details", "footer", "h1", "h2",
        "h3", "head", "header", "html", "li", "line", "main", "meta", "nav", "ol", "p", "pattern",
        "rect", "section", "span", "strong", "style", "summary", "svg", "table", "tbody", "td",
        "text", "th", "thead", "title", "tr",
    ];
    for t in &tags {
        assert!(allowed.contains(t), "unexpected element <{t}>");
    }
}

#[test]
fn every_section_is_there_with_its_heading_in_order() {
    let html = page(&hostile());
    let mut at = 0;
    for (id, heading) in SECTIONS {
        let tag = format!("<section id=\"{id}\">\n<h2>{heading}</h2>");
        let found = html[at..].find(&tag).unwrap_or_else(|| panic!("{tag}"));
        at += found + tag.len();
    }
    assert_eq!(html.matches("<svg").count(), 2, "two charts");
    assert!(html.contains("<details><summary>The figures</summary>"));
    assert!(html.contains("… and 3 more"));
}

#[test]
fn no_script_and_no_url_but_the_policy_that_forbids_them() {
    for data in [hostile(), empty()] {
        let html = page(&data);
        let csp = format!("<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">");
        assert_eq!(html.matches(&csp).count(), 1);
        let rest = html.replace(&csp, "");
        for sign in [
            "http",
            "//",
            "<script",
            "javascript:",
            "src=",
            "@import",
            "url(h",
        ] {
            assert!(!rest.to_lowercase().contains(sign), "{sign} in the page");
        }
        // In-page references only: fragment links and SVG patterns.
        for href in rest.split("href=\"").skip(1) {
            assert!(href.starts_with('#'), "{}", &href[..20.min(href.len())]);
        }
        for u in rest.split("url(").skip(1) {
            assert!(u.starts_with('#'), "{}", &u[..20.min(u.len())]);
        }
    }
}

fn empty() -> ReportData {
    let h = hostile();
    let intact = Verdict::Intact {
        records: 0,
        unchecked_runs: 0,
        signed: None,
    };
    ReportData {
        holdings: Err("the journal was pruned: it knows what was held from X on".into()),
        ..ReportData::new(&h.from, &h.to, &h.generated_at, intact)
    }
}

#[test]
fn an_empty_period_says_so_in_every_section() {
    let html = page(&empty());
    for text in [
        "<span class=\"badge ok\">intact</span>",
        "Signatures were not checked (no --public-key given)",
        "none at or before the period&#39;s end",
        "No changes to contacts were recorded in this period.",
        "No contact was deleted in this period.",
        "No safety rail fired in this period.",
        "No override was given in this period.",
        "No agreement&#39;s terms changed in this period.",
        "No conflict is open.",
        "the journal was pruned: it knows what was held from X on",
        "No compliance check recorded in this period: a full run records one \
         (<code>absync sync --full</code>, or the service&#39;s scheduled full runs); \
         <code>absync audit</code> answers now but records nothing.",
    ] {
        assert!(html.contains(text), "{text}");
    }
    assert!(!html.contains("<svg"));
}

#[test]
fn every_row_has_a_cell_per_heading() {
    let html = page(&hostile());
    let tables: Vec<&str> = html.split("<table>").skip(1).collect();
    assert!(tables.len() >= 9, "{}", tables.len());
    for t in tables {
        let t = &t[..t.find("</table>").unwrap()];
        let headings = t.matches("</th>").count();
        for row in t.split("<tr>").skip(2) {
            assert_eq!(row.matches("</td>").count(), headings, "{t}");
        }
    }
}

#[test]
fn counts_are_grouped_by_thousands() {
    assert_eq!(
        [0, 999, 1000, 20002, 1234567].map(grouped),
        ["0", "999", "1,000", "20,002", "1,234,567"]
    );
}

#[test]
fn a_compliance_check_shows_its_outcome_and_figures() {
    let mut data = empty();
    data.compliance = Some(Compliance {
        record: 5,
        at: "2026-03-06T12:00:00.000000Z".into(),
        run: 2,
        outcome: "violation".into(),
        reason: "held beyond the agreements".into(),
        figures: vec![
            ("covered".into(), "40".into()),
            ("violations".into(), "2".into()),
        ],
    });
    let html = page(&data);
    assert!(html.contains("<span class=\"badge bad\">violation</span>"));
    assert!(html.contains("<td>violations</td><td>2</td>"));
}

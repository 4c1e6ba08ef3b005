//! The auditor's tools after a realistic sequence of runs: an initial load,
//! source changes, a conflict, a failed entry, and an agreement expiring
//! (and, in the queries test, a leaver hidden for a grace period and back).
//! Every `absync journal` command is run as an auditor would run it.

use std::collections::BTreeSet;

use absync::ldap::Conn;

use crate::common::check::*;
use crate::common::env::{Objects, Run, SyncEnv};

/// The sequence, and what the tests need to know about it.
struct History {
    env: SyncEnv,
    codes: Vec<String>,
    /// A person renamed and modified in run 2.
    changed: String,
    changed_mail: String,
    /// A person in the organisation whose agreement expires in run 3.
    purged: String,
    /// Time stamps between the runs.
    after_run1: String,
    after_run2: String,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn history(name: &str) -> History {
    let env = SyncEnv::new(name, 51, 60, 3, "nhs-to-ad-contact.toml").await;
    // A mapping without the title limit, so AD refuses an over-long title.
    let shipped = std::fs::read_to_string(
        crate::common::testbed::repo_root().join("mappings/nhs-to-ad-contact.toml"),
    )
    .unwrap();
    let mapping = env.dir.join("no-title-limit.toml");
    std::fs::write(&mapping, shipped.replace("max_length = 128", "")).unwrap();
    let codes = env.org_codes();
    let a = vec![codes[0].clone(), codes[1].clone()];
    let b = vec![codes[2].clone()];
    env.write_agreements(&[
        ("DSA-AUD-A", &a, ALL_ATTRS, &day(-30), &day(30)),
        ("DSA-AUD-B", &b, ALL_ATTRS, &day(-30), &day(30)),
    ]);
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let active: Vec<(&String, &std::collections::BTreeMap<String, Vec<String>>)> = people
        .iter()
        .filter(|(_, p)| p["nhsentrystatus"][0] == "active")
        .collect();
    let (changed, cp) = active
        .iter()
        .find(|(_, p)| p["nhsodscode"][0] == codes[0] && p.contains_key("mail"))
        .unwrap();
    let (purged, _) = active
        .iter()
        .find(|(_, p)| p["nhsodscode"][0] == codes[2])
        .unwrap();
    // A conflict: an object absync does not own holds a person's name.
    let (victim_anchor, victim) = active
        .iter()
        .find(|(_, p)| p["nhsodscode"][0] == codes[1] && p.contains_key("givenname"))
        .unwrap();
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    admin
        .add(
            &format!(
                "CN={} {},{}",
                victim["givenname"][0], victim["sn"][0], env.target_ou
            ),
            vec![
                ("objectClass".into(), ["contact".into()].into()),
                ("description".into(), ["made by hand".into()].into()),
            ],
        )
        .await
        .unwrap();
    env.sync_ok();
    let after_run1 = now();
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // Run 2: a rename and a modify; with the title limit taken out of the
    // mapping, entries AD refuses (exit 1).
    env.write_config(mapping.to_str().unwrap(), "");
    let (_, failing) = active
        .iter()
        .find(|(u, p)| p["nhsodscode"][0] == codes[1] && u != changed && u != victim_anchor)
        .unwrap();
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: sn\nsn: Ó Súilleabháin\n-\nreplace: displayName\ndisplayName: Renamed Person\n-\nreplace: title\ntitle: Clinical Director\n-\n\n\
         dn: {}\nchangetype: modify\nreplace: title\ntitle: {}\n-\n\n",
        cp["dn"][0],
        failing["dn"][0],
        "Consultant ".repeat(20)
    ));
    let r2 = env.absync(&["sync"]);
    assert_eq!(r2.code, 1, "one entry refused (title too long): {r2:?}");
    let after_run2 = now();
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // Run 3: agreement B has expired: its organisation is purged.
    env.write_agreements(&[
        ("DSA-AUD-A", &a, ALL_ATTRS, &day(-30), &day(30)),
        ("DSA-AUD-B", &b, ALL_ATTRS, &day(-30), &day(-1)),
    ]);
    let r3 = env.absync(&["sync"]);
    assert_eq!(
        r3.code, 1,
        "the refused entry is retried and refused again: {r3:?}"
    );
    History {
        changed: changed.to_string(),
        changed_mail: cp["mail"][0].to_lowercase(),
        purged: purged.to_string(),
        codes,
        env,
        after_run1,
        after_run2,
    }
}

fn journal(env: &SyncEnv, args: &[&str]) -> Run {
    let mut all = vec!["journal"];
    all.extend_from_slice(args);
    env.absync(&all)
}

#[tokio::test]
async fn an_auditor_can_answer_what_when_under_which_agreement_and_who_held_what() {
    let h = history("audit-queries").await;
    let env = &h.env;

    let verify = journal(env, &["verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(verify.stdout.starts_with("intact, "), "{verify:?}");

    // runs: one line per run, status, counts; JSON for tools.
    let runs = journal(env, &["runs"]);
    assert_eq!(runs.stdout.lines().count(), 3, "{runs:?}");
    assert!(
        runs.stdout.lines().next().unwrap().contains(" ok "),
        "{runs:?}"
    );
    assert!(runs.stdout.contains("done with failures"));
    let json: serde_json::Value =
        serde_json::from_str(&journal(env, &["runs", "--format", "json"]).stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert!(json[0]["files"]["agreements"].as_str().unwrap().len() == 64);
    let since = journal(env, &["runs", "--since", &h.after_run1]);
    assert_eq!(since.stdout.lines().count(), 2, "{since:?}");

    // show: every change in a run, with its reason and agreement.
    let show = journal(env, &["show", "1", "--format", "json"]);
    let records: Vec<serde_json::Value> = serde_json::from_str(&show.stdout).unwrap();
    assert!(records
        .iter()
        .any(|r| r["op"] == "conflict" && r["outcome"] == "withheld"));
    assert!(records
        .iter()
        .filter(|r| r["op"] == "add")
        .all(|r| r["agreements"][0].as_str().unwrap().starts_with("DSA-AUD-")));
    assert_eq!(records.first().unwrap()["op"], "run");
    assert_eq!(records.last().unwrap()["op"], "run");
    let show2 = journal(env, &["show", "2"]);
    assert!(
        show2.stdout.contains("failed") && show2.stdout.contains("error: "),
        "{show2:?}"
    );

    // history by anchor, by mail and by DN: the same life.
    let by_id = journal(env, &["history", &h.changed, "--format", "json"]);
    let life: Vec<serde_json::Value> = serde_json::from_str(&by_id.stdout).unwrap();
    let ops: Vec<&str> = life.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(ops, vec!["add", "rename", "modify"], "{by_id:?}");
    let title = &life[2]["changes"]["title"];
    assert_eq!(title["new"][0], "Clinical Director");
    assert!(!title["old"].as_array().unwrap().is_empty());
    let renamed_dn = life[1]["dn"].as_str().unwrap().to_string();
    for who in [h.changed_mail.as_str(), renamed_dn.as_str()] {
        let other = journal(env, &["history", who, "--format", "json"]);
        assert_eq!(other.stdout, by_id.stdout, "history by {who}");
    }
    let table = journal(env, &["history", &h.changed_mail]);
    assert!(table.stdout.contains("title: ") && table.stdout.contains("-> \"Clinical Director\""));
    let nobody = journal(env, &["history", "nobody@example.org"]);
    assert_eq!(nobody.code, 2);
    assert!(nobody
        .stderr
        .contains("no journal record mentions nobody@example.org"));

    // held: reconstructed at points in time, per organisation.
    let held = |at: &str, org: Option<&str>| -> Vec<serde_json::Value> {
        let mut args = vec!["held", "--at", at, "--format", "json"];
        if let Some(o) = org {
            args.extend(["--org", o]);
        }
        let r = journal(env, &args);
        assert_eq!(r.code, 0, "{r:?}");
        serde_json::from_str(&r.stdout).unwrap()
    };
    let now_held = held(&now(), None);
    assert_held_is(&now_held, &env.ad_objects().await);
    let held_anchors: BTreeSet<String> = now_held
        .iter()
        .map(|r| r["anchor"].as_str().unwrap().to_string())
        .collect();
    let at1 = held(&h.after_run1, None);
    assert!(
        at1.iter().any(|r| r["anchor"] == h.purged.as_str()),
        "held before the purge"
    );
    assert!(
        !held_anchors.contains(&h.purged),
        "not held after the purge"
    );
    let changed_then = at1
        .iter()
        .find(|r| r["anchor"] == h.changed.as_str())
        .unwrap();
    assert_ne!(
        changed_then["state"]["attrs"]["title"][0], "Clinical Director",
        "the attributes held then, not now"
    );
    let changed_later = held(&h.after_run2, None)
        .into_iter()
        .find(|r| r["anchor"] == h.changed.as_str())
        .unwrap();
    assert_eq!(
        changed_later["state"]["attrs"]["title"][0],
        "Clinical Director"
    );
    let org_b = held(&h.after_run1, Some(&h.codes[2]));
    assert!(!org_b.is_empty() && org_b.iter().all(|r| r["org"] == h.codes[2].as_str()));
    assert!(held("2000-01-01", None).is_empty());
    let table = journal(env, &["held", "--at", &h.after_run1, "--org", &h.codes[2]]);
    assert!(
        table
            .stdout
            .lines()
            .last()
            .unwrap()
            .starts_with(&format!("{} objects held at", org_b.len())),
        "{table:?}"
    );

    // agreement: everything under DSA-AUD-B, the purge included.
    let b = journal(env, &["agreement", "DSA-AUD-B", "--format", "json"]);
    let under_b: Vec<serde_json::Value> = serde_json::from_str(&b.stdout).unwrap();
    assert!(under_b.iter().any(|r| r["op"] == "add"));
    let purge: Vec<&serde_json::Value> = under_b.iter().filter(|r| r["op"] == "delete").collect();
    assert!(!purge.is_empty());
    assert!(purge.iter().all(|r| r["reason"]
        == format!("agreement DSA-AUD-B ended {}", day(-1)).as_str()
        && r["run_id"] == 3));
    assert_eq!(
        purge.len(),
        org_b.len(),
        "every held object of B was purged"
    );

    // config-changes: the agreements file changed before run 3.
    let cc = journal(env, &["config-changes"]);
    let lines: Vec<&str> = cc.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{cc:?}");
    assert!(lines[0].contains("run 1") && lines[0].contains("config, mapping, agreements"));
    assert!(lines[1].contains("run 2") && lines[1].contains("changed: config, mapping "));
    assert!(lines[2].contains("run 3") && lines[2].contains("changed: agreements "));

    // Every query as CSV: the same answers, one quoted field per column.
    let runs_csv = csv(env, &["runs"], &RUNS_HEADER);
    assert_eq!(runs_csv.len(), 3);
    for (row, j) in runs_csv.iter().zip(json.as_array().unwrap()) {
        assert_eq!(row[0], j["id"].to_string());
        assert_eq!(row[1], j["started_at"].as_str().unwrap());
        assert_eq!(row[5], j["status"].as_str().unwrap());
        assert_eq!(row[6], j["counts"]["added"].to_string());
        assert_eq!(row[15], j["unix_user"].as_str().unwrap());
        assert_eq!(row[18], j["files"]["agreements"].as_str().unwrap());
    }
    let record_header = &RECORD_HEADER;
    let show_csv = csv(env, &["show", "1"], record_header);
    assert_eq!(
        show_csv.iter().map(|r| r[3].as_str()).collect::<Vec<_>>(),
        records
            .iter()
            .map(|r| r["op"].as_str().unwrap())
            .collect::<Vec<_>>()
    );
    assert!(show_csv.iter().all(|r| r[2] == "1"));
    let life_csv = csv(env, &["history", &h.changed_mail], record_header);
    assert_eq!(
        life_csv.iter().map(|r| r[3].as_str()).collect::<Vec<_>>(),
        vec!["add", "rename", "modify"]
    );
    assert_eq!(life_csv[1][8], renamed_dn);
    let changes: serde_json::Value = serde_json::from_str(&life_csv[2][11]).unwrap();
    assert_eq!(changes["title"]["new"][0], "Clinical Director");
    assert_eq!(life_csv[2][14], "displayName sn title");
    let (header, held_rows) = held_csv(env, &["--at", &h.after_run1, "--org", &h.codes[2]]);
    assert_eq!(held_rows.len(), org_b.len());
    assert_eq!(header, held_header(&org_b));
    for row in &held_rows {
        let j = org_b
            .iter()
            .find(|j| j["anchor"] == row[0].as_str())
            .unwrap();
        assert_eq!(row[1], h.codes[2]);
        assert_eq!(row[2], j["state"]["dn"].as_str().unwrap());
        assert_eq!(row[3], "DSA-AUD-B");
        assert_eq!(row[4], "");
        let attrs: serde_json::Value = serde_json::from_str(&row[5]).unwrap();
        assert_eq!(attrs, j["state"]["attrs"]);
        assert_eq!(row[6], j["at"].as_str().unwrap());
        for (name, cell) in header.iter().zip(row).skip(7) {
            let values = &attrs[name.strip_prefix("attr:").unwrap()];
            let joined = values.as_array().map(|v| {
                v.iter()
                    .map(|v| v.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(" | ")
            });
            assert_eq!(cell, &guarded(&joined.unwrap_or_default()), "{name}");
        }
    }
    let b_csv = csv(env, &["agreement", "DSA-AUD-B"], record_header);
    assert_eq!(b_csv.len(), under_b.len());
    assert!(b_csv
        .iter()
        .all(|r| r[10].split(';').any(|a| a == "DSA-AUD-B")));
    let cc_csv = csv(env, &["config-changes"], &CONFIG_CHANGES_HEADER);
    assert_eq!(
        cc_csv
            .iter()
            .map(|r| (r[0].as_str(), r[2].as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("1", "config mapping agreements"),
            ("2", "config mapping"),
            ("3", "agreements")
        ]
    );
    assert_eq!(
        cc_csv[2][5],
        json[2]["files"]["agreements"].as_str().unwrap()
    );

    // With a grace period a leaver is hidden, not deleted, and restored
    // when they come back. While hidden the contact is still in AD (in the
    // quarantine OU), so `held` still lists it, marked hidden.
    let quarantine = env.new_quarantine().await;
    env.set_safety(&format!(
        "[safety]\nmax_deletes = 1000000\nmax_delete_percent = 100\n\
         delete_grace = \"7d\"\nquarantine_ou = \"{quarantine}\"\n"
    ));
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let (returner, rp) = people
        .iter()
        .find(|(u, p)| {
            p["nhsodscode"][0] == h.codes[0]
                && p["nhsentrystatus"][0] == "active"
                && **u != h.changed
                && held_anchors.contains(*u)
        })
        .unwrap();
    let status = |s: &str| {
        format!(
            "dn: {}\nchangetype: modify\nreplace: nhsEntryStatus\nnhsEntryStatus: {s}\n-\n\n",
            rp["dn"][0]
        )
    };
    env.change_source(&status("leaver"));
    // (Exit 1: the entry AD refuses is still refused.)
    assert_eq!(env.absync(&["sync"]).code, 1);
    let while_hidden = now();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.change_source(&status("active"));
    assert_eq!(env.absync(&["sync"]).code, 1);
    let life = journal(env, &["history", returner, "--format", "json"]);
    let life: Vec<serde_json::Value> = serde_json::from_str(&life.stdout).unwrap();
    let ops: Vec<&str> = life.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(ops, vec!["add", "hide", "restore"], "{life:?}");
    assert_eq!(life[1]["reason"], "leaver");
    assert_eq!(
        (life[1]["run_id"].as_i64(), life[2]["run_id"].as_i64()),
        (Some(4), Some(5))
    );
    let hidden_then = held(&while_hidden, Some(&h.codes[0]))
        .into_iter()
        .find(|r| r["anchor"] == returner.as_str())
        .expect("a hidden contact is still held");
    assert!(!hidden_then["state"]["hidden"].is_null(), "{hidden_then}");
    assert!(
        hidden_then["state"]["dn"]
            .as_str()
            .unwrap()
            .ends_with(&quarantine),
        "{hidden_then}"
    );
    let (_, hidden_csv) = held_csv(env, &["--at", &while_hidden, "--org", &h.codes[0]]);
    assert_eq!(
        hidden_csv
            .iter()
            .filter(|r| r[4] == "hidden")
            .map(|r| r[0].as_str())
            .collect::<Vec<_>>(),
        vec![returner.as_str()]
    );
    let back = held(&now(), Some(&h.codes[0]))
        .into_iter()
        .find(|r| r["anchor"] == returner.as_str())
        .unwrap();
    assert!(back["state"]["hidden"].is_null());
    assert!(!back["state"]["dn"].as_str().unwrap().ends_with(&quarantine));
    assert_eq!(journal(env, &["verify"]).code, 0);
}

#[tokio::test]
async fn exports_open_in_a_spreadsheet_and_redaction_hides_personal_values() {
    let h = history("audit-export").await;
    let env = &h.env;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", env.config_path().to_str().unwrap()])
        .args([
            "journal",
            "export",
            "--since",
            "2000-01-01",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let bytes = out.stdout;
    assert!(bytes.starts_with(b"\xef\xbb\xbf"), "UTF-8 byte-order mark");
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("Ó Súilleabháin"), "UTF-8 kept");
    // The one dialect (every field quoted, CRLF); as many fields as
    // columns (commas inside DNs stay inside).
    let (header, rows) = parse_csv(text.strip_prefix('\u{feff}').unwrap());
    assert_eq!(header, RECORD_HEADER);

    let jsonl = journal(
        env,
        &["export", "--since", "2000-01-01", "--format", "jsonl"],
    );
    let all: Vec<serde_json::Value> = jsonl
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(all.len(), rows.len());
    let recent = journal(
        env,
        &["export", "--since", &h.after_run2, "--format", "jsonl"],
    );
    assert!(recent.stdout.lines().count() < all.len());

    let redacted = journal(
        env,
        &[
            "export",
            "--since",
            "2000-01-01",
            "--format",
            "jsonl",
            "--redact",
        ],
    );
    assert!(
        !redacted.stdout.contains(&h.changed_mail),
        "no mail addresses"
    );
    assert!(!redacted.stdout.contains("Súilleabháin"), "no names");
    assert!(!redacted.stdout.contains("OU=NHS Directory"), "no DNs");
    assert!(
        redacted.stdout.contains(&h.changed),
        "anchors stay, to follow a person"
    );
    assert!(redacted.stdout.contains("sha256:"));
    assert!(
        redacted.stdout.contains("agreement DSA-AUD-B ended"),
        "reasons stay"
    );
}

/// A title a spreadsheet would run as a formula, and other values that
/// start like one, synced from the source: every `--format csv` command
/// writes the one dialect, no cell of any of them starts a formula, and
/// `held` has each attribute in its own column.
#[tokio::test]
async fn every_csv_is_one_dialect_and_no_cell_is_a_live_formula() {
    let env = SyncEnv::new("audit-csv", 71, 4, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-CSV", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let (anchor, person) = people
        .iter()
        .find(|(_, p)| p["nhsentrystatus"][0] == "active")
        .unwrap();
    let hyperlink = r#"=HYPERLINK("http://evil","x")"#;
    let hostile = [
        ("title", hyperlink),
        ("mobile", "-1+2"),
        ("nhsJobRole", "@SUM(A1:A9)"),
    ];
    let mut ldif = format!("dn: {}\nchangetype: modify\n", person["dn"][0]);
    for (attr, value) in hostile {
        ldif.push_str(&format!("replace: {attr}\n"));
        absync::engine::render::ldif_line(&mut ldif, attr, value);
        ldif.push_str("-\n");
    }
    env.change_source(&(ldif + "\n"));
    env.sync_ok();

    // Every CSV a command writes, parsed: one dialect, no live formula.
    let no_formula = |rows: &[Vec<String>]| {
        for cell in rows.iter().flatten() {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a cell starts a formula: {cell:?}"
            );
        }
    };
    let runs = csv(&env, &["runs"], &RUNS_HEADER);
    no_formula(&runs);
    no_formula(&csv(&env, &["config-changes"], &CONFIG_CHANGES_HEADER));
    for args in [
        vec!["show", "1"],
        vec!["history", anchor.as_str()],
        vec!["agreement", "DSA-CSV"],
    ] {
        let rows = csv(&env, &args, &RECORD_HEADER);
        no_formula(&rows);
        let add = rows
            .iter()
            .find(|r| r[3] == "add" && r[6] == *anchor)
            .unwrap_or_else(|| panic!("the add in {args:?}"));
        let changes: serde_json::Value = serde_json::from_str(&add[11]).unwrap();
        assert_eq!(changes["title"]["new"][0], hyperlink, "exact in the JSON");
        assert!(
            add[14].split(' ').any(|a| a == "title"),
            "changed_attributes: {add:?}"
        );
    }

    // held: each attribute in its column, the formula neutralised; the
    // exact values in the `attributes` JSON.
    let at = now();
    let held_json: Vec<serde_json::Value> =
        serde_json::from_str(&journal(&env, &["held", "--at", &at, "--format", "json"]).stdout)
            .unwrap();
    let (header, rows) = held_csv(&env, &["--at", &at]);
    no_formula(&rows);
    assert_eq!(header, held_header(&held_json));
    assert_eq!(rows.len(), held_json.len());
    let column = |name: &str| header.iter().position(|c| c == name).unwrap();
    let row = rows.iter().find(|r| r[0] == *anchor).unwrap();
    assert_eq!(row[column("attr:title")], format!("'{hyperlink}"));
    assert_eq!(row[column("attr:mobile")], "'-1+2");
    assert_eq!(row[column("attr:info")], "'@SUM(A1:A9)");
    let attrs: serde_json::Value = serde_json::from_str(&row[column("attributes")]).unwrap();
    assert_eq!(attrs["title"][0], hyperlink);

    // --bom: a byte-order mark before the same CSV; refused without CSV.
    let plain = journal(&env, &["held", "--at", &at, "--format", "csv"]);
    let bom = journal(&env, &["held", "--at", &at, "--format", "csv", "--bom"]);
    assert_eq!(bom.stdout, format!("\u{feff}{}", plain.stdout));
    let before = journal(&env, &["--bom", "runs", "--format", "csv"]);
    assert!(before.stdout.starts_with("\u{feff}\"run\","), "{before:?}");
    let table = journal(&env, &["runs", "--bom"]);
    assert_eq!(table.code, 2, "{table:?}");
    assert!(
        table.stderr.contains("--bom is for --format csv only"),
        "{table:?}"
    );

    // export: the same dialect, with its byte-order mark as always.
    let export = journal(&env, &["export", "--since", "2000-01-01"]);
    assert_eq!(export.code, 0, "{export:?}");
    let (header, rows) = parse_csv(export.stdout.strip_prefix('\u{feff}').unwrap());
    assert_eq!(header, RECORD_HEADER);
    no_formula(&rows);
    assert!(rows.iter().any(|r| r[11].contains("HYPERLINK")));
    assert_eq!(journal(&env, &["verify"]).code, 0);
}

/// `held` (as JSON) names exactly the objects in AD, with their DNs and
/// every attribute value it records.
fn assert_held_is(held: &[serde_json::Value], ad: &Objects) {
    let ad = by_anchor(ad);
    let anchors: BTreeSet<&str> = held.iter().map(|h| h["anchor"].as_str().unwrap()).collect();
    assert_eq!(
        anchors,
        ad.keys().map(String::as_str).collect(),
        "held = AD, object for object"
    );
    for h in held {
        let live = &ad[h["anchor"].as_str().unwrap()];
        assert_eq!(
            absync::dn::normalize(h["state"]["dn"].as_str().unwrap()),
            absync::dn::normalize(&live["dn"][0]),
            "{h}"
        );
        for (k, v) in h["state"]["attrs"].as_object().unwrap() {
            let mut held: Vec<&str> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let mut live: Vec<&str> = live[&k.to_lowercase()].iter().map(String::as_str).collect();
            held.sort_unstable();
            live.sort_unstable();
            assert_eq!(held, live, "{k} of {}", h["anchor"]);
        }
    }
}

/// The CSV columns of a journal record, as the README documents them.
const RECORD_HEADER: [&str; 15] = [
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

const RUNS_HEADER: [&str; 19] = [
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

const CONFIG_CHANGES_HEADER: [&str; 6] = [
    "run",
    "at",
    "changed",
    "config_hash",
    "mapping_hash",
    "agreements_hash",
];

/// A cell as the formula guard writes it.
fn guarded(v: &str) -> String {
    if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_string()
    }
}

/// `held`'s CSV columns for these objects (as `held` prints them in
/// JSON): the fixed ones, then `attr:NAME` for every attribute any of them
/// holds, sorted.
fn held_header(held: &[serde_json::Value]) -> Vec<String> {
    let names: BTreeSet<&String> = held
        .iter()
        .flat_map(|h| h["state"]["attrs"].as_object().unwrap().keys())
        .collect();
    [
        "anchor",
        "org",
        "dn",
        "agreements",
        "hidden",
        "attributes",
        "since",
    ]
    .iter()
    .map(|c| c.to_string())
    .chain(names.into_iter().map(|n| format!("attr:{n}")))
    .collect()
}

/// CSV text parsed with the csv crate: its header and rows. The text must
/// be exactly what the one dialect writes of them: every field quoted,
/// every line ended by CRLF, every row as wide as the header.
fn parse_csv(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut rows: Vec<Vec<String>> = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    let mut again = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    for r in &rows {
        again.write_record(r).unwrap();
    }
    let again = String::from_utf8(again.into_inner().unwrap()).unwrap();
    assert_eq!(text, again, "every field quoted, CRLF line ends");
    assert!(!rows.is_empty(), "a header");
    let header = rows.remove(0);
    (header, rows)
}

/// A query's CSV rows, its header checked.
fn csv(env: &SyncEnv, args: &[&str], header: &[&str]) -> Vec<Vec<String>> {
    let (got, rows) = csv_of(env, args);
    assert_eq!(got, header, "{args:?}");
    rows
}

/// A query's CSV: header and rows.
fn csv_of(env: &SyncEnv, args: &[&str]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut all = args.to_vec();
    all.extend(["--format", "csv"]);
    let r = journal(env, &all);
    assert_eq!(r.code, 0, "{r:?}");
    parse_csv(&r.stdout)
}

/// `journal held` as CSV: header and rows.
fn held_csv(env: &SyncEnv, args: &[&str]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut all = vec!["held"];
    all.extend_from_slice(args);
    csv_of(env, &all)
}

#[tokio::test]
async fn verify_catches_an_edited_a_deleted_and_a_reordered_record() {
    let h = history("audit-tamper").await;
    let env = &h.env;
    let db = env.state_dir().join("absync.db");
    let pristine = std::fs::read(&db).unwrap();
    let tamper = |sql: &str| -> Run {
        std::fs::write(&db, &pristine).unwrap();
        let _ = std::fs::remove_file(env.state_dir().join("absync.db-wal"));
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        journal(env, &["verify"])
    };
    let edited = tamper("UPDATE journal SET reason = 'nothing to see' WHERE id = 7;");
    assert_eq!(edited.code, 1, "{edited:?}");
    assert!(
        edited.stdout.contains("BROKEN at record 7") && edited.stdout.contains("edited"),
        "{edited:?}"
    );

    let deleted = tamper("DELETE FROM journal WHERE id = 9;");
    assert_eq!(deleted.code, 1);
    assert!(
        deleted.stdout.contains("BROKEN at record 9") && deleted.stdout.contains("missing"),
        "{deleted:?}"
    );

    // Two records swap places (their ids), as a reordering would.
    let reordered = tamper(
        "UPDATE journal SET id = -1 WHERE id = 11; UPDATE journal SET id = 11 WHERE id = 12;
         UPDATE journal SET id = 12 WHERE id = -1;",
    );
    assert_eq!(reordered.code, 1);
    assert!(
        reordered.stdout.contains("BROKEN at record 11"),
        "{reordered:?}"
    );

    let tail = tamper("DELETE FROM journal WHERE id = (SELECT max(id) FROM journal);");
    assert_eq!(tail.code, 1);
    assert!(tail.stdout.contains("head hash"), "{tail:?}");

    let runs_row = tamper("UPDATE runs SET status = 'ok' WHERE id = 2;");
    assert_eq!(runs_row.code, 1);
    assert!(
        runs_row.stdout.contains("run 2 in the runs table differs"),
        "{runs_row:?}"
    );

    // The oldest records deleted, and journal_meta written as if a prune
    // had removed them: no prune record in the chain vouches for it.
    let forged = tamper(
        "INSERT INTO journal_meta SELECT 'pruned_id', id FROM journal WHERE id = 5;
         INSERT INTO journal_meta SELECT 'pruned_hash', hash FROM journal WHERE id = 5;
         DELETE FROM journal WHERE id <= 5;",
    );
    assert_eq!(forged.code, 1, "{forged:?}");
    assert!(
        forged.stdout.contains("BROKEN at record 6")
            && forged.stdout.contains("no prune record in the chain"),
        "{forged:?}"
    );

    // The runs table is what `runs` and `config-changes` show: every
    // column is checked against the run's start and end records.
    let files = tamper("UPDATE runs SET agreements_hash = mapping_hash WHERE id = 2;");
    assert_eq!(files.code, 1, "{files:?}");
    assert!(
        files.stdout.contains(
            "run 2 in the runs table differs from its journaled start (agreements_hash edited)"
        ),
        "{files:?}"
    );
    let who = tamper("UPDATE runs SET unix_user = 'someone else' WHERE id = 1;");
    assert_eq!(who.code, 1, "{who:?}");
    assert!(
        who.stdout.contains(
            "run 1 in the runs table differs from its journaled start (unix_user edited)"
        ),
        "{who:?}"
    );
    let gone = tamper("DELETE FROM runs WHERE id = 2;");
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(
        gone.stdout
            .contains("run 2 is journaled but has no row in the runs table (deleted)"),
        "{gone:?}"
    );
    let added = tamper(
        "INSERT INTO runs (id, started_at, mode, status, config_hash, unix_user)
         SELECT 4, started_at, mode, 'ok', config_hash, unix_user FROM runs WHERE id = 3;",
    );
    assert_eq!(added.code, 1, "{added:?}");
    assert!(
        added
            .stdout
            .contains("run 4 in the runs table has no journaled start"),
        "{added:?}"
    );

    std::fs::write(&db, &pristine).unwrap();
    let fine = journal(env, &["verify"]);
    assert_eq!(fine.code, 0, "{fine:?}");
}

#[tokio::test]
async fn each_run_logs_its_head_hash_and_no_password_reaches_the_journal() {
    let env = SyncEnv::new("audit-head", 52, 20, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-H", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", env.config_path().to_str().unwrap(), "sync"])
        .env("ABSYNC_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let snap = env.snapshot();
    let head = snap.runs(1).unwrap()[0].head_hash.clone().unwrap();
    assert!(
        stderr.contains("journal head") && stderr.contains(&head),
        "{stderr}"
    );
    // The journal can be read with nothing but the state directory.
    let by_dir = std::process::Command::new(env!("CARGO_BIN_EXE_absync"))
        .args([
            "journal",
            "--state",
            env.state_dir().to_str().unwrap(),
            "verify",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&by_dir.stdout).starts_with("intact, "));
    let db = std::fs::read(env.state_dir().join("absync.db")).unwrap();
    for key in ["SOURCE_SYNC_PASSWORD_FILE", "TARGET_SVC_PASSWORD_FILE"] {
        let pw = std::fs::read(env.tb.get(key)).unwrap();
        assert!(
            !db.windows(pw.len()).any(|w| w == pw.as_slice()),
            "a password is in the state database"
        );
    }
}

#[tokio::test]
async fn retention_prunes_old_records_and_the_chain_still_verifies() {
    let env = SyncEnv::new("audit-retention", 53, 20, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-R", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    let first = env.snapshot().stored_where("1", &[]).unwrap().len();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!("{text}\n[journal]\nretention = \"2s\"\nallow_short_retention = true\n"),
    )
    .unwrap();
    env.sync_ok();
    let snap = env.snapshot();
    let kept = snap.stored_where("1", &[]).unwrap();
    assert!(
        kept.iter().all(|r| r.record.run_id == 2),
        "run 1's records are gone"
    );
    let prune = kept
        .iter()
        .find(|r| r.record.op == "prune")
        .expect("pruning is journaled");
    assert_eq!(
        prune.record.detail.as_ref().unwrap()["records"],
        first as u64
    );
    let verify = journal(&env, &["verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert_eq!(
        verify.stdout.trim(),
        format!("intact, {} records", kept.len())
    );
    // What was held is still known after the records that said so went:
    // `held` now is what AD holds, attribute for attribute, from the
    // checkpoints the pruning left.
    let held_now = journal(&env, &["held", "--at", &now(), "--format", "json"]);
    assert_eq!(held_now.code, 0, "{held_now:?}");
    let held_now: Vec<serde_json::Value> = serde_json::from_str(&held_now.stdout).unwrap();
    assert_held_is(&held_now, &env.ad_objects().await);
    let checkpoints: Vec<i64> = kept
        .iter()
        .filter(|r| r.record.op == "checkpoint")
        .map(|r| r.id)
        .collect();
    assert_eq!(
        checkpoints.len(),
        held_now.len(),
        "one checkpoint per object"
    );
    assert!(held_now
        .iter()
        .all(|h| checkpoints.contains(&h["record"].as_i64().unwrap())));
    let someone = held_now[0]["anchor"].as_str().unwrap();
    let life = journal(&env, &["history", someone, "--format", "json"]);
    let life: Vec<serde_json::Value> = serde_json::from_str(&life.stdout).unwrap();
    assert_eq!(life.len(), 1);
    assert_eq!(life[0]["op"], "checkpoint");
    assert_eq!(life[0]["outcome"], "held");
    // Before the cut the journal no longer knows, and says so.
    let before = journal(&env, &["held", "--at", "2000-01-01"]);
    assert_eq!(before.code, 2, "{before:?}");
    assert!(
        before
            .stderr
            .contains("were removed after the retention period"),
        "{before:?}"
    );
    assert_eq!(
        snap.runs(10)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![2],
        "run 1's row went with its records"
    );
    drop(snap);
    // Deleting the oldest kept records, the prune record among them, and
    // moving journal_meta's pruned start up to match, is caught.
    let db = env.state_dir().join("absync.db");
    let pristine = std::fs::read(&db).unwrap();
    let _ = std::fs::remove_file(env.state_dir().join("absync.db-wal"));
    let prune_id = prune.id;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(&format!(
            "UPDATE journal_meta SET value = (SELECT id FROM journal WHERE id = {prune_id})
               WHERE key = 'pruned_id';
             UPDATE journal_meta SET value = (SELECT hash FROM journal WHERE id = {prune_id})
               WHERE key = 'pruned_hash';
             DELETE FROM journal WHERE id <= {prune_id};"
        ))
        .unwrap();
    let forged = journal(&env, &["verify"]);
    assert_eq!(forged.code, 1, "{forged:?}");
    assert!(
        forged.stdout.contains("no prune record in the chain"),
        "{forged:?}"
    );
    std::fs::write(&db, &pristine).unwrap();
    // Deleting the oldest kept record is still caught.
    rusqlite::Connection::open(env.state_dir().join("absync.db"))
        .unwrap()
        .execute(
            "DELETE FROM journal WHERE id = (SELECT min(id) FROM journal)",
            [],
        )
        .unwrap();
    let broken = journal(&env, &["verify"]);
    assert_eq!(broken.code, 1, "{broken:?}");
}

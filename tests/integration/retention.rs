//! Durations that cannot be misread where a slip is costly, and pruning
//! that keeps the pruning run's records and can archive what goes.

use crate::common::check::*;
use crate::common::env::{Run, SyncEnv};

async fn env(name: &str) -> SyncEnv {
    let env = SyncEnv::new(name, 141, 12, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-T", &codes, ALL_ATTRS, &day(-1), &day(30))]);
    env
}

/// The config as the test bed wrote it, with `journal` as its [journal]
/// section (appended: [safety] stays the last section it replaces).
fn with_journal(env: &SyncEnv, base: &str, journal: &str) {
    std::fs::write(env.config_path(), format!("{base}\n[journal]\n{journal}\n")).unwrap();
}

/// `file:line: ` of the config's line starting with `start`.
fn at(env: &SyncEnv, start: &str) -> String {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let line = text.lines().position(|l| l.starts_with(start)).unwrap() + 1;
    format!("{}:{line}: ", env.config_path().display())
}

fn refused(r: &Run, says: &[&str]) {
    assert_eq!(r.code, 2, "{r:?}");
    for s in says {
        assert!(r.stderr.contains(s), "{s:?} not in {r:?}");
    }
}

#[tokio::test]
async fn a_retention_or_grace_that_could_be_misread_is_refused_where_it_is_written() {
    let env = env("ret-refuse").await;
    let base = std::fs::read_to_string(env.config_path()).unwrap();
    // Six minutes or six months? Neither check nor sync guesses.
    with_journal(&env, &base, "retention = \"6m\"");
    let place = format!("{}journal.retention: ", at(&env, "retention"));
    for cmd in ["check", "sync"] {
        let r = env.absync(&[cmd]);
        refused(&r, &[&place, "minutes", "months", "\"6mo\""]);
    }
    assert!(env.ad_objects().await.is_empty(), "nothing was written");
    assert!(!env.state_dir().join("absync.db").exists(), "no state");
    // "7d" typed for "7y": refused without the explicit setting.
    with_journal(&env, &base, "retention = \"7d\"");
    let r = env.absync(&["check"]);
    refused(
        &r,
        &[&place, "under one year", "allow_short_retention = true"],
    );
    // The same grace period slip.
    let grace = base.replace("delete_grace = \"0\"", "delete_grace = \"6m\"");
    assert_ne!(grace, base);
    std::fs::write(env.config_path(), &grace).unwrap();
    let r = env.absync(&["sync"]);
    let place = format!("{}safety.delete_grace: ", at(&env, "delete_grace"));
    refused(&r, &[&place, "minutes", "months"]);
}

#[tokio::test]
async fn check_says_before_when_records_would_be_pruned() {
    let env = env("ret-check").await;
    let base = std::fs::read_to_string(env.config_path()).unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let day = |d: time::Date| d.to_string();
    // Seven calendar years back (from 29 February: 1 March).
    let seven_years = today.replace_year(today.year() - 7).unwrap_or_else(|_| {
        time::Date::from_calendar_date(today.year() - 7, time::Month::March, 1).unwrap()
    });
    // 18 months back: that month, or the first of the next when it is
    // shorter than today's day.
    let index = today.year() * 12 + i32::from(u8::from(today.month())) - 1 - 18;
    let month = |i: i32| format!("{}-{:02}-", i.div_euclid(12), i.rem_euclid(12) + 1);
    let cases = [
        ("retention = \"7y\"", "7y", vec![day(seven_years)]),
        (
            "retention = \"7d\"\nallow_short_retention = true",
            "7d",
            vec![day(today - time::Duration::days(7))],
        ),
        (
            "retention = \"18mo\"",
            "1y6mo",
            vec![month(index), format!("{}01", month(index + 1))],
        ),
    ];
    for (journal, shown, dates) in cases {
        with_journal(&env, &base, journal);
        let r = env.absync(&["check"]);
        assert_eq!(r.code, 0, "{r:?}");
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with("retention"))
            .unwrap_or_else(|| panic!("{r:?}"));
        assert!(
            line.contains(&format!(
                "journal.retention: {shown}: a run now would prune"
            )),
            "{line}"
        );
        assert!(
            dates
                .iter()
                .any(|d| line.contains(&format!("the records from before {d}"))),
            "{dates:?}: {line}"
        );
    }
    // Schedules and timeouts keep m for minutes, and take compound values.
    let compound = base
        .replace(
            "anchor_attribute = \"adminDescription\"",
            "anchor_attribute = \"adminDescription\"\ntimeout = \"1m30s\"",
        )
        .replace("[state]", "[schedule]\ninterval = \"1h30m\"\n\n[state]");
    std::fs::write(env.config_path(), &compound).unwrap();
    let r = env.absync(&["check"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[tokio::test]
async fn a_run_that_prunes_keeps_its_own_records_and_archives_what_goes() {
    let env = env("ret-archive").await;
    let base = std::fs::read_to_string(env.config_path()).unwrap();
    let archive = env.state_dir().with_file_name("archive");
    std::fs::create_dir_all(&archive).unwrap();
    with_journal(
        &env,
        &base,
        &format!(
            "retention = \"1s\"\nallow_short_retention = true\narchive_dir = \"{}\"",
            archive.display()
        ),
    );
    env.sync_ok();
    let first = env.snapshot().stored_where("1", &[]).unwrap();
    assert!(first.iter().all(|r| r.record.run_id == 1));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.sync_ok();
    let snap = env.snapshot();
    let kept = snap.stored_where("1", &[]).unwrap();
    // Run 1's records went, none of run 2's did: the journal starts with
    // run 2's start, and its terms are there, recorded again.
    assert_eq!(
        (kept[0].record.run_id, kept[0].record.op.as_str()),
        (2, "run")
    );
    assert!(kept.iter().all(|r| r.record.run_id == 2));
    let terms: Vec<_> = kept
        .iter()
        .filter(|r| r.record.op == "agreements")
        .collect();
    assert_eq!(terms.len(), 1, "{terms:?}");
    let detail = terms[0].record.detail.as_ref().unwrap();
    assert_eq!(detail["agreements"][0]["id"], "DSA-T");
    let metrics = absync::service::metrics::render(&env.state_dir());
    assert!(
        metrics.contains("absync_agreement_valid_until_timestamp_seconds{agreement=\"DSA-T\"}"),
        "{metrics}"
    );
    // The archive holds run 1's records as they were, and verifies.
    let prune = kept.iter().find(|r| r.record.op == "prune").unwrap();
    let pd = prune.record.detail.as_ref().unwrap();
    let file = std::path::PathBuf::from(pd["archive"].as_str().unwrap());
    assert_eq!(file.parent().unwrap(), archive);
    let text = std::fs::read_to_string(&file).unwrap();
    let archived: Vec<absync::state::journal::Stored> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(archived, first);
    assert_eq!(pd["pruned_last_hash"], first.last().unwrap().hash);
    let r = env.absync(&["journal", "verify", "--file", file.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("intact"), "{r:?}");
    let r = env.absync(&["journal", "verify"]);
    assert_eq!(r.code, 0, "{r:?}");
    // A record changed in the archive is caught.
    let forged = text.replacen("\"op\":\"add\"", "\"op\":\"modify\"", 1);
    assert_ne!(forged, text);
    std::fs::write(&file, forged).unwrap();
    let r = env.absync(&["journal", "verify", "--file", file.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    // An archive directory that is gone: the run fails, nothing is pruned.
    std::fs::remove_file(&file).unwrap();
    std::fs::remove_dir(&archive).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("journal archive") && r.stderr.contains("nothing was pruned"),
        "{r:?}"
    );
    let after = env.snapshot().stored_where("1", &[]).unwrap();
    assert_eq!(after[0].id, kept[0].id, "nothing was pruned");
    let runs = env.snapshot().runs(10).unwrap();
    assert!(runs[0].status.starts_with("failed: "), "{runs:?}");
}

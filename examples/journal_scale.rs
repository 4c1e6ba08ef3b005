//! Measures the auditor's queries on a large journal.
//!
//!   cargo run --release --example journal_scale -- [RECORDS] [DIR]
//!
//! Writes RECORDS journal records (default 1,000,000: 100,000 people, each
//! added, then in each later round modified, or one in ten renamed, one in
//! ten hidden and restored the round after) into a fresh state database in
//! DIR, in transactions of 10,000, then times `history`, `held` (at the end
//! and half-way through the writing), `agreement`, `verify` and an export,
//! and prints the figures.

use std::collections::BTreeMap;
use std::time::Instant;

use absync::state::audit;
use absync::state::journal::{AttrChange, Record};
use absync::state::{Hidden, ObjectRow, Snapshot};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let total: u64 = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = std::path::PathBuf::from(
        args.get(2)
            .cloned()
            .unwrap_or_else(|| format!("/tmp/absync-journal-scale-{total}")),
    );
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let snap = Snapshot::open(&dir)?;
    let people = (total / 10).max(1) as usize;
    let t = Instant::now();
    let run = snap.start_run("sync", &Default::default())?;
    let mut batch = Vec::with_capacity(10_000);
    let mut written = 0u64;
    let mut round = 0u64;
    let mut mid = None;
    let mut ops: BTreeMap<&str, u64> = BTreeMap::new();
    // Per person: the DN now and whether hidden.
    let mut dns: Vec<String> = (0..people)
        .map(|p| format!("cn=Person {p},OU=NHS Directory,DC=sync,DC=test"))
        .collect();
    let mut hidden = vec![false; people];
    while written < total {
        for p in 0..people {
            if written >= total {
                break;
            }
            let anchor = format!("{p:08x}-0000-1000-8000-000000000000");
            let org = format!("R{:02}", p % 50);
            let mail = format!("person{p}@nhs.net");
            let title = format!("Title {round}");
            let mut attrs = BTreeMap::new();
            attrs.insert("mail".to_string(), vec![mail.clone()]);
            attrs.insert("title".to_string(), vec![title.clone()]);
            attrs.insert("sn".to_string(), vec![format!("Surname{p}")]);
            // Each round: a hidden person is restored; of the others, one in
            // ten is hidden (a leaver in the grace period), one in ten
            // renamed, the rest modified.
            let slot = (p as u64 + round) % 10;
            let (op, reason) = match (round, hidden[p], slot) {
                (0, _, _) => ("add", "new entry"),
                (_, true, _) => ("restore", "back in scope"),
                (_, false, 0) => ("hide", "leaver"),
                (_, false, 5) => ("rename", "renamed in source"),
                _ => ("modify", "attributes changed"),
            };
            *ops.entry(op).or_default() += 1;
            let old_dn = dns[p].clone();
            match op {
                "hide" => {
                    dns[p] = format!(
                        "cn=Person {p} [{anchor}],OU=absync quarantine,OU=NHS Directory,DC=sync,DC=test"
                    );
                    hidden[p] = true;
                }
                "restore" => {
                    dns[p] = format!("cn=Person {p},OU=NHS Directory,DC=sync,DC=test");
                    hidden[p] = false;
                }
                "rename" => {
                    dns[p] = format!("cn=Person {p} r{round},OU=NHS Directory,DC=sync,DC=test");
                }
                _ => {}
            }
            let dn = dns[p].clone();
            let mut r = Record::new(run, op, "applied", reason);
            r.anchor = Some(anchor.clone());
            r.dn = Some(dn.clone());
            if dn != old_dn {
                r.old_dn = Some(old_dn);
            }
            r.org = Some(org.clone());
            r.agreements = vec![format!("DSA-{:02}", p % 5)];
            if op == "add" || op == "modify" {
                r.changes.insert(
                    "title".into(),
                    AttrChange {
                        old: if round == 0 {
                            vec![]
                        } else {
                            vec![format!("Title {}", round - 1)]
                        },
                        new: vec![title],
                    },
                );
            }
            r.state = Some(ObjectRow {
                anchor,
                dn,
                org,
                agreements: r.agreements.clone(),
                attrs,
                hidden: hidden[p].then(|| Hidden {
                    at: "2026-01-01T00:00:00Z".into(),
                    reason: "leaver".into(),
                }),
            });
            batch.push(r);
            written += 1;
            if batch.len() == 10_000 {
                snap.journal(&batch)?;
                batch.clear();
                if mid.is_none() && written >= total / 2 {
                    mid = Some(absync::state::journal::now());
                }
            }
        }
        round += 1;
    }
    snap.journal(&batch)?;
    snap.end_run(run, "ok", &Default::default(), None)?;
    let write_secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(dir.join("absync.db"))?.len();
    println!(
        "wrote {written} records for {people} people in {write_secs:.1} s ({:.0} records/s); database {:.0} MB",
        written as f64 / write_secs,
        size as f64 / 1e6
    );
    println!("operations: {ops:?}");

    let time = |what: &str, f: &mut dyn FnMut() -> usize| {
        let t = Instant::now();
        let n = f();
        println!(
            "{what:<40} {:>8.3} s  ({n} rows)",
            t.elapsed().as_secs_f64()
        );
    };
    let at = audit::parse_when("2999-01-01", true)?;
    time("history by anchor", &mut || {
        audit::history(&snap, "00000042-0000-1000-8000-000000000000")
            .unwrap()
            .len()
    });
    time("history by mail", &mut || {
        audit::history(&snap, "person4242@nhs.net").unwrap().len()
    });
    time("history by DN", &mut || {
        audit::history(&snap, "cn=Person 4242,OU=NHS Directory,DC=sync,DC=test")
            .unwrap()
            .len()
    });
    time("held --at (everyone)", &mut || {
        let mut n = 0;
        audit::held(&snap, &at, None, &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    });
    let mid = mid.unwrap_or_else(|| at.clone());
    time("held --at mid-journal (everyone)", &mut || {
        let mut n = 0;
        audit::held(&snap, &mid, None, &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    });
    time("held --at --org R07", &mut || {
        let mut n = 0;
        audit::held(&snap, &at, Some("R07"), &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    });
    time("agreement DSA-03", &mut || {
        let mut n = 0;
        audit::agreement(&snap, "DSA-03", &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    });
    time(
        "verify",
        &mut || match absync::state::verify::verify(&snap, &Default::default()).unwrap() {
            absync::state::verify::Verdict::Intact { records, .. } => records as usize,
            broken => panic!("{broken}"),
        },
    );
    time("export (read every record)", &mut || {
        let mut n = 0;
        audit::since(&snap, "2000-01-01T00:00:00Z", &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    });
    Ok(())
}

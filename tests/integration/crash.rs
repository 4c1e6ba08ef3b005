//! Crash at any point: an initial sync and a mixed change set (adds,
//! modifies, renames, deletes, soft deletes) are killed again and again,
//! at random moments (SIGKILL, offsets from a printed seed) and at the
//! moments around a snapshot commit (failpoints); one more run must then
//! leave AD exactly as expected, the snapshot consistent with it, every
//! accepted change journaled and the journal intact.
//!
//! A representative subset always runs; `ABSYNC_CRASH_FULL=1` runs the full
//! matrix (10,000 entries, 30 random kills per phase); `ABSYNC_CRASH_SEED`
//! replays a seed.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::check::*;
use crate::common::env::SyncEnv;

/// A small, seeded generator (xorshift), so a failing seed replays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

enum Kill {
    After(Duration),
    Failpoint(&'static str, u64),
}

/// Runs `absync sync` until the kill; returns whether it was killed.
fn sync_killed(env: &SyncEnv, kill: &Kill) -> bool {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_absync"));
    cmd.args(["--config", env.config_path().to_str().unwrap(), "sync"])
        .env("ABSYNC_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Kill::Failpoint(name, n) = kill {
        cmd.env("ABSYNC_FAILPOINT", format!("{name}:{n}"));
    }
    let mut child = cmd.spawn().unwrap();
    if let Kill::After(d) = kill {
        let deadline = Instant::now() + *d;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    !status.success()
}

/// Everything that must hold after the run that follows the crashes.
fn assert_converged(env: &SyncEnv, codes: &[String], phase: &str) {
    let ad = assert_ad_holds_expected(env, codes, phase);
    let visible: BTreeSet<String> = ad.keys().cloned().collect();
    // ad_guids panics on a duplicate anchor anywhere below the OU.
    let all = tokio::runtime::Handle::current().block_on(env.ad_guids());
    let snap = env.snapshot();
    assert!(
        snap.intents().unwrap().is_empty(),
        "{phase}: nothing in flight"
    );
    let mut rows: BTreeMap<String, absync::snapshot::ObjectRow> = BTreeMap::new();
    snap.for_each(|r| {
        rows.insert(r.anchor.clone(), r);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        all.keys().collect::<Vec<_>>(),
        "{phase}: snapshot rows = objects in AD (no orphans, no lost rows)"
    );
    for (anchor, (dn, _)) in &all {
        assert!(
            absync::diff::same_dn(dn, &rows[anchor].dn),
            "{phase}: snapshot has {} for {dn}",
            rows[anchor].dn
        );
        assert_eq!(
            rows[anchor].hidden.is_some(),
            !visible.contains(anchor),
            "{phase}: hidden in the snapshot = in quarantine in AD ({dn})"
        );
    }
    let adds: BTreeMap<String, usize> = snap
        .stored_where("op = 'add' AND outcome = 'applied'", &[])
        .unwrap()
        .into_iter()
        .fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.record.anchor.unwrap()).or_default() += 1;
            m
        });
    for anchor in all.keys() {
        assert_eq!(
            adds.get(anchor),
            Some(&1),
            "{phase}: {anchor} journaled once as added"
        );
    }
    let verify = env.absync(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{phase}: {verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_at_any_point_converge_on_the_next_run() {
    let full = std::env::var_os("ABSYNC_CRASH_FULL").is_some();
    let (people, random_kills) = if full { (10_000, 30) } else { (600, 4) };
    let seed = std::env::var("ABSYNC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
                | 1
        });
    println!("crash matrix: seed {seed} (replay with ABSYNC_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let env = SyncEnv::new("crash", 101, people, 6, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-C", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let quarantine = env.new_quarantine().await;
    env.set_safety(&format!(
        "[safety]\nmax_deletes = 1000000\nmax_delete_percent = 100\ndelete_grace = \"7d\"\nquarantine_ou = \"{quarantine}\"\n"
    ));
    let env = &env;
    tokio::task::block_in_place(|| {
        let mut survived = 0;
        let mut kills = |phase: &str, writes: u64, max_ms: u64, rng: &mut Rng| {
            let mut plan: Vec<Kill> = vec![
                Kill::Failpoint("after-intent", 1),
                Kill::Failpoint("before-commit", 1 + rng.below(writes)),
                Kill::Failpoint("after-commit", 1 + rng.below(writes)),
                Kill::Failpoint("after-intent", 1 + rng.below(writes)),
            ];
            for _ in 0..random_kills {
                plan.push(Kill::After(Duration::from_millis(50 + rng.below(max_ms))));
            }
            for k in &plan {
                if sync_killed(env, k) {
                    survived += 1;
                }
            }
            println!("{phase}: {} kill points tried", plan.len());
        };

        // Phase A: the initial load. Adds commit 16 at a time (one intent
        // transaction and one commit per batch), so the failpoints count
        // batches here.
        kills("initial", people as u64 / 16 / 3, 2500, &mut rng);
        env.sync_ok();
        assert_converged(env, &codes, "initial");

        // Phase B: a mixed change set, soft deletes included.
        let out = Command::new("python3")
            .arg(crate::common::testbed::repo_root().join("tests/testbed/nhsgen.py"))
            .args(["changes", "--base", &env.source_base])
            .args([
                "--seed",
                "101",
                "--people",
                &people.to_string(),
                "--orgs",
                "6",
            ])
            .args(["--change-seed", &(seed % 1000).to_string()])
            .args(["--adds", "20", "--modifies", "40", "--renames", "20"])
            .args(["--deletes", "15", "--leavers", "15"])
            .output()
            .unwrap();
        assert!(out.status.success());
        env.change_source(&String::from_utf8(out.stdout).unwrap());
        kills("changes", 100, 800, &mut rng);
        env.sync_ok();
        assert_converged(env, &codes, "changes");
        println!("crash matrix: {survived} runs were killed mid-way and recovered from");
        assert!(survived >= 4, "the kills did interrupt runs ({survived})");
    });
}

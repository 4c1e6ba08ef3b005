//! Runs that tell the truth: a run whose process was killed is closed as
//! `died` (shown so by readers until the next run journals it), and a
//! person who moves organisation is journaled as such, not as renamed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use absync::state::{ReadFrom, Snapshot};

use crate::common::check::*;
use crate::common::env::SyncEnv;

/// The runs table's status of run `id`, read read-only.
fn status_of(env: &SyncEnv, id: i64) -> String {
    let s = Snapshot::open_read_only(&env.state_dir(), ReadFrom::Live).unwrap();
    let runs = s.runs(u32::MAX).unwrap();
    runs.into_iter().find(|r| r.id == id).unwrap().status
}

/// Applied adds journaled so far, read read-only (0 before the database).
fn adds_journaled(env: &SyncEnv) -> i64 {
    let Ok(s) = Snapshot::open_read_only(&env.state_dir(), ReadFrom::Live) else {
        return 0;
    };
    s.stored_where("op = 'add' AND outcome = 'applied'", &[])
        .map_or(0, |r| r.len() as i64)
}

/// Starts `absync sync` and SIGKILLs it once it has journaled some adds,
/// while it is still running (a failed assertion if it ended first).
fn sync_killed_mid_run(env: &SyncEnv) {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", env.config_path().to_str().unwrap(), "sync"])
        .env("ABSYNC_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while adds_journaled(env) < 20 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before the kill: make the test bed larger");
        }
        assert!(Instant::now() < deadline, "no adds journaled in 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run ended first");
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_is_shown_died_then_closed_as_died_by_the_next_run() {
    let env = SyncEnv::new("died", 181, 1200, 4, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-D", &codes, ALL_ATTRS, &day(-1), &day(30))]);
    let env = &env;
    tokio::task::block_in_place(|| {
        sync_killed_mid_run(env);
        let killed = {
            let s = Snapshot::open_read_only(&env.state_dir(), ReadFrom::Live).unwrap();
            s.runs(1).unwrap()[0].id
        };
        assert_eq!(
            status_of(env, killed),
            "running",
            "the row as the kill left it"
        );

        // Readers show it died: nothing holds the lock. They write nothing.
        let status = env.absync(&["status"]);
        assert_eq!(status.code, 0, "{status:?}");
        let line = status
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{killed} ")))
            .unwrap_or_else(|| panic!("no run {killed} in {status:?}"));
        assert!(line.contains("died (not yet journaled)"), "{line}");
        let runs = env.absync(&["journal", "runs", "--format", "json"]);
        assert!(runs.stdout.contains("died (not yet journaled)"), "{runs:?}");
        let metrics = absync::service::metrics::render(&env.state_dir());
        assert!(
            metrics.contains("\nabsync_last_run_failed 1\n"),
            "{metrics}"
        );
        assert_eq!(
            status_of(env, killed),
            "running",
            "status and journal runs only read"
        );

        // The next run journals the death, then converges.
        let next = env.sync_ok();
        assert!(
            next.stderr.contains(&format!("run {killed} died")),
            "{next:?}"
        );
        assert_eq!(status_of(env, killed), "died");
        let s = Snapshot::open_read_only(&env.state_dir(), ReadFrom::Live).unwrap();
        let end = s
            .stored_where(
                "run_id = ?1 AND op = 'run' AND outcome = 'ended'",
                &[&killed],
            )
            .unwrap();
        assert_eq!(end.len(), 1, "one end record for the killed run");
        assert!(end[0].record.reason.starts_with("died: "), "{end:?}");
        let detail = end[0].record.detail.clone().unwrap();
        assert!(
            detail["counts"]["added"].as_u64().unwrap() >= 20,
            "{detail}"
        );
        let newest = s.runs(1).unwrap()[0].clone();
        assert!(newest.id > killed && newest.status == "ok", "{newest:?}");
        assert!(
            end[0].id < s.stored_where("run_id = ?1", &[&newest.id]).unwrap()[0].id,
            "closed before the next run started"
        );

        let runs = env.absync(&["journal", "runs"]);
        let line = runs
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("run {killed} ")))
            .unwrap_or_else(|| panic!("no run {killed} in {runs:?}"));
        assert!(line.contains(" died "), "{line}");
        assert!(!runs.stdout.contains("running"), "{runs:?}");
        let metrics = absync::service::metrics::render(&env.state_dir());
        assert!(
            metrics.contains("absync_runs_total{status=\"died\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("absync_runs_total{status=\"ok\"} 1"),
            "{metrics}"
        );
        assert!(!metrics.contains("running\""), "{metrics}");
        let verify = env.absync(&["journal", "verify"]);
        assert_eq!(verify.code, 0, "{verify:?}");
        assert_converged(env, &codes, "after the killed run");
    });
}

#[tokio::test]
async fn a_person_who_moves_organisation_is_journaled_as_moved_not_renamed() {
    let env = SyncEnv::new("moved", 182, 12, 4, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-M", &codes[..3], ALL_ATTRS, &day(-1), &day(30))]);
    let uid = |n: &str| format!("{n}{}", std::process::id());
    let person = |n: &str, given: &str, sn: &str, org: &str| {
        format!(
            "dn: uid={},ou=People,{}\nchangetype: add\nobjectClass: inetOrgPerson\n\
             objectClass: nhsPerson\nuid: {}\ncn: {given} {sn}\nsn: {sn}\ngivenName: {given}\n\
             mail: {}@nhs.net\nnhsOdsCode: {org}\nnhsEntryStatus: active\n\n",
            uid(n),
            env.source_base,
            uid(n),
            uid(n)
        )
    };
    // Two people of one name: the second gets the tie-broken name.
    env.change_source(&person("twina", "Ann", "Twin", &codes[0]));
    env.sync_ok();
    env.change_source(&person("twinb", "Ann", "Twin", &codes[1]));
    env.change_source(&person("rena", "Rhys", "Old", &codes[1]));
    env.sync_ok();
    let dn_of = |n: &str| format!("uid={},ou=People,{}", uid(n), env.source_base);
    let ad = env.ad_objects().await;
    let tied = format!("Ann Twin ({})", codes[1]);
    assert!(
        ad.keys().any(|dn| dn.contains(&tied)),
        "{tied} in {:?}",
        ad.keys()
    );

    // One moves to another covered organisation, another is renamed.
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: nhsOdsCode\nnhsOdsCode: {}\n-\n\n\
         dn: {}\nchangetype: modify\nreplace: sn\nsn: New\n-\nreplace: cn\ncn: Rhys New\n-\n\n",
        dn_of("twinb"),
        codes[2],
        dn_of("rena"),
    ));
    let run = env.sync_ok();
    assert!(summary_line(&run, "added").contains("renamed 2"), "{run:?}");
    let ad = env.ad_objects().await;
    let moved_to = format!("Ann Twin ({})", codes[2]);
    assert!(
        ad.keys().any(|dn| dn.contains(&moved_to)),
        "{:?}",
        ad.keys()
    );

    let snap = env.snapshot();
    let run_id = snap.runs(1).unwrap()[0].id;
    let records = snap.records(run_id).unwrap();
    let of = |op: &str, dn_part: &str| {
        records
            .iter()
            .find(|r| r.op == op && r.dn.as_deref().is_some_and(|d| d.contains(dn_part)))
            .map(|r| r.reason.clone())
            .unwrap_or_else(|| panic!("no {op} of {dn_part} in {records:#?}"))
    };
    assert_eq!(of("rename", &moved_to), "moved organisation");
    // Its company changed with it: the same reason.
    assert_eq!(of("modify", &moved_to), "moved organisation");
    assert_eq!(of("rename", "Rhys New"), "renamed in source");
    assert_eq!(of("modify", "Rhys New"), "attributes changed");
}

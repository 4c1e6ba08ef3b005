//! Crash at any point: an initial sync, a mixed change set (adds,
//! modifies, renames, deletes, soft deletes) and a window of modifies and
//! deletes (sent 32 at a time) are killed again and again,
//! at random moments (SIGKILL, offsets from a printed seed), at the moments
//! around a snapshot commit and at the start and end of the pull's pages
//! (failpoints). Every kill must interrupt a run (the failpoint fired, or
//! the process was still running), and each kill is placed where work is
//! left. One more run must then leave AD exactly as expected, attribute
//! values included, the snapshot and each object's last journal record
//! equal to AD, and the journal intact (`check::assert_converged`).
//!
//! A representative subset always runs (600 entries, 24 kills, about 35 s);
//! `ABSYNC_CRASH_FULL=1` runs the full matrix (10,000 entries and a change
//! set ten times larger, 12 failpoint and 30 random kills per phase, each
//! random kill preceded by a measuring failpoint kill, plus the page
//! failpoints of the initial load); `ABSYNC_CRASH_SEED` replays a seed.

use std::collections::BTreeSet;
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

#[derive(Debug)]
enum Kill {
    /// SIGKILL after this long.
    After(Duration),
    /// Abort at the Nth time the named failpoint is reached.
    Failpoint(&'static str, u64),
}

/// Runs `absync sync` until the kill and checks that the kill interrupted
/// it: the failpoint fired (its message, SIGABRT), or the process was still
/// running when SIGKILL came. Returns how long the run lasted.
fn sync_killed(env: &SyncEnv, kill: &Kill) -> Duration {
    use std::os::unix::process::ExitStatusExt;
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_absync"));
    cmd.args(["--config", env.config_path().to_str().unwrap(), "sync"])
        .env("ABSYNC_LOG", "error")
        // Windows of 16 adds and 32 other writes: more kill points in the
        // same data than the default sizes give.
        .env("ABSYNC_WINDOW", "16,32")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Kill::Failpoint(name, n) = kill {
        cmd.env("ABSYNC_FAILPOINT", format!("{name}:{n}"));
    }
    let mut child = cmd.spawn().unwrap();
    if let Kill::After(d) = kill {
        let deadline = started + *d;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{kill:?}: the run ended ({status}) before the kill");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    match kill {
        Kill::After(_) => assert_eq!(out.status.signal(), Some(9), "{kill:?}: {err}"),
        Kill::Failpoint(name, n) => {
            assert!(
                out.status.signal() == Some(6)
                    && err.contains(&format!("failpoint {name}:{n} reached")),
                "{kill:?} did not fire: {}\n{err}",
                out.status
            );
        }
    }
    took
}

/// A lower bound on how often the intent and commit failpoints will be
/// reached by the next run, from a dry run's plan: adds commit up to 16 at
/// a time, modifies in place and deletes up to 32 at a time (the windows
/// `sync_killed` sets),
/// every other write on its own. Two groups less for the writes in flight
/// (two groups at most), which the next run may settle instead of writing.
fn writes_left(env: &SyncEnv) -> u64 {
    let plan = env.absync(&["sync", "--dry-run", "--format", "json"]);
    assert!(plan.code == 0 || plan.code == 3, "{plan:?}");
    let (mut adds, mut windowed, mut others) = (0u64, 0u64, 0u64);
    for line in plan.stdout.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let in_place =
            v["dn"].as_str().map(str::to_lowercase) == v["old_dn"].as_str().map(str::to_lowercase);
        match v["op"].as_str().unwrap_or_default() {
            "add" => adds += 1,
            "update" | "restore" if in_place => windowed += 1,
            "delete" => windowed += 1,
            "update" | "restore" | "hide" => others += 1,
            _ => {}
        }
    }
    (adds.div_ceil(16) + windowed / 32 + others).saturating_sub(2)
}

struct Matrix<'a> {
    env: &'a SyncEnv,
    rng: Rng,
    kills: usize,
}

impl Matrix<'_> {
    fn kill(&mut self, k: Kill) -> Duration {
        self.kills += 1;
        sync_killed(self.env, &k)
    }

    /// One phase: `points` kills at the intent and commit failpoints and
    /// `random` SIGKILLs at random moments, each placed where work is left
    /// so that it interrupts the run; then the pull's page failpoints
    /// (`pages` pages; none for a delta pull, which is not paged).
    fn phase(&mut self, phase: &str, points: usize, random: usize, pages: u64) {
        let before = self.kills;
        let (mut points_left, mut random_left) = (points, random);
        while points_left + random_left > 0 {
            let to_go = (points_left + random_left) as u64;
            let left = writes_left(self.env);
            assert!(
                left >= 2 * to_go,
                "{phase}: too little work left ({left} writes) for {to_go} kills"
            );
            // Each kill may use up at most half of its share of the work.
            let share = (left / (2 * to_go)).max(1);
            // Failpoints and random kills alternate.
            let random_turn = random_left > 0
                && (points_left == 0 || random_left * points >= points_left * random);
            if random_turn {
                // How long the run takes to reach its first write, measured
                // with a failpoint kill there (itself a kill point); the
                // SIGKILL comes between half that and that plus 40 ms: in
                // the pull, the planning or the first writes.
                let first_write = self.kill(Kill::Failpoint("after-intent", 1));
                let ms = first_write.as_millis() as u64;
                let at = ms / 2 + self.rng.below(ms / 2 + 40);
                self.kill(Kill::After(Duration::from_millis(at)));
                random_left -= 1;
            } else {
                let name =
                    ["after-intent", "before-commit", "after-commit"][(points - points_left) % 3];
                let n = 1 + self.rng.below(share);
                self.kill(Kill::Failpoint(name, n));
                points_left -= 1;
            }
        }
        // The page failpoints fire on every full pull, whatever is left to
        // write: the first and the last page, and others at random.
        if pages > 0 {
            let mut at: BTreeSet<u64> = [1, pages].into();
            for _ in 0..(points + random) / 10 {
                at.insert(1 + self.rng.below(pages));
            }
            for p in at {
                self.kill(Kill::Failpoint("page-start", p));
                self.kill(Kill::Failpoint("page-end", p));
            }
        }
        println!(
            "{phase}: {} kill points, each interrupted a run",
            self.kills - before
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_at_any_point_converge_on_the_next_run() {
    let full = std::env::var_os("ABSYNC_CRASH_FULL").is_some();
    // (people, failpoint kills and random kills per phase, change set scale)
    let (people, points, random, scale) = if full {
        (10_000u64, 12, 30, 10)
    } else {
        (600, 4, 3, 2)
    };
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
    let env = SyncEnv::new("crash", 101, people as u32, 6, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-C", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let quarantine = env.new_quarantine().await;
    env.set_safety(&format!(
        "[safety]\nmax_deletes = 1000000\nmax_delete_percent = 100\ndelete_grace = \"7d\"\nquarantine_ou = \"{quarantine}\"\n"
    ));
    let in_scope =
        expected_anchors(&env.source_people("(objectClass=nhsPerson)").await, &codes).len() as u64;
    let env = &env;
    tokio::task::block_in_place(|| {
        let mut m = Matrix {
            env,
            rng: Rng(seed),
            kills: 0,
        };

        // Phase A: the initial load, a full pull (page_size 200) each time
        // until one run completes.
        m.phase("initial", points, random, in_scope.div_ceil(200));
        env.sync_ok();
        assert_converged(env, &codes, "initial");

        // Phase B: a mixed change set, soft deletes included, read as a
        // delta.
        let n = |k: u64| (k * scale).to_string();
        let out = Command::new("python3")
            .arg(crate::common::testbed::repo_root().join("tests/testbed/nhsgen.py"))
            .args(["changes", "--base", &env.source_base])
            .args(["--seed", "101", "--people", &people.to_string()])
            .args(["--orgs", "6"])
            .args(["--change-seed", &(seed % 1000).to_string()])
            .args(["--adds", &n(20), "--modifies", &n(40), "--renames", &n(20)])
            .args(["--deletes", &n(15), "--leavers", &n(15)])
            .output()
            .unwrap();
        assert!(out.status.success());
        env.change_source(&String::from_utf8(out.stdout).unwrap());
        m.phase("changes", points, random, 0);
        env.sync_ok();
        assert_converged(env, &codes, "changes");

        // Phase C: the window alone: modifies in place and deletes (no
        // grace now, so the objects hidden in phase B are deleted too), which
        // the target is sent up to 32 at a time, while the answers to the
        // window before are committed.
        env.set_safety(&format!(
            "[safety]\nmax_deletes = 1000000\nmax_delete_percent = 100\ndelete_grace = \"0\"\nquarantine_ou = \"{quarantine}\"\n"
        ));
        let filter = "(&(objectClass=nhsPerson)(!(nhsEntryStatus=leaver)))";
        let current = tokio::runtime::Handle::current().block_on(env.source_people(filter));
        let dns: Vec<&String> = current.values().map(|a| &a["dn"][0]).collect();
        let (modified, deleted) = (140 * scale as usize, 20 * scale as usize);
        let mut ldif = String::new();
        for (i, dn) in dns.iter().take(modified).enumerate() {
            ldif +=
                &format!("dn: {dn}\nchangetype: modify\nreplace: title\ntitle: Window {i}\n-\n\n");
        }
        for dn in dns.iter().skip(modified).take(deleted) {
            ldif += &format!("dn: {dn}\nchangetype: delete\n\n");
        }
        env.change_source(&ldif);
        // Fewer kills: a window's writes reach the failpoints once per 32.
        let (points, random) = if full { (12, 6) } else { (3, 1) };
        m.phase("window", points, random, 0);
        env.sync_ok();
        assert_converged(env, &codes, "window");
        println!("crash matrix: {} kills, each interrupted a run", m.kills);
    });
}

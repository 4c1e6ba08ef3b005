//! The test bed: one slapd (source) and one Samba AD (target) per test run.
//!
//! `ABSYNC_TESTBED` names a running test bed (its directory or its
//! `testbed.env`), as `tests/run` and CI set it. Without it, the first test
//! in this process brings one up with `tests/testbed/up.sh`, torn down when
//! the process exits. A test bed that cannot start fails the test loudly:
//! nothing here ever skips.
//!
//! The replicated test bed (`Testbed::replicated`, `up.sh --replicas`) has
//! two servers on each side, for the failover tests: `ABSYNC_TESTBED_REPLICAS`
//! names it, or one is started for the process. Its servers are killed,
//! started and partitioned with `tests/testbed/server.sh`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use absync::ldap::{Conn, Endpoint, Transport};
use absync::secret::Secret;

pub struct Testbed {
    pub dir: PathBuf,
    env: HashMap<String, String>,
}

static TESTBED: OnceLock<Testbed> = OnceLock::new();
static REPLICATED: OnceLock<Testbed> = OnceLock::new();

/// The shared test bed, started on first use.
pub fn testbed() -> &'static Testbed {
    TESTBED.get_or_init(|| {
        allow_root();
        match std::env::var_os("ABSYNC_TESTBED") {
            Some(p) => Testbed::load(Path::new(&p), Some("ABSYNC_TESTBED")),
            None => Testbed::start_own(),
        }
    })
}

/// The suite runs as root (Samba needs it); absync refuses root unless
/// told. Set before any child process starts.
fn allow_root() {
    if std::env::var_os("ABSYNC_ALLOW_ROOT").is_none() {
        std::env::set_var("ABSYNC_ALLOW_ROOT", "1");
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

impl Testbed {
    /// The test bed in `path` (its directory or its `testbed.env`), named
    /// by the environment variable `var` or, without one, just started.
    fn load(path: &Path, var: Option<&str>) -> Testbed {
        let file = if path.is_dir() {
            path.join("testbed.env")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| match var {
            Some(var) => panic!(
                "{var}={} but {} cannot be read ({e}); bring a test bed up with \
                 tests/testbed/up.sh DIR, or unset {var} to start one",
                path.display(),
                file.display()
            ),
            None => panic!("up.sh wrote no {} ({e})", file.display()),
        });
        let dir = file.parent().unwrap().to_path_buf();
        Testbed {
            dir,
            env: parse_env(&text),
        }
    }

    /// A test bed of its own for one test that kills and restarts servers
    /// (the shared one must stay up for the others). Stopped when the test
    /// process exits.
    pub fn start_private(name: &str) -> &'static Testbed {
        allow_root();
        let dir = std::env::temp_dir().join(super::unique(&format!("absync-bed-{name}")));
        Box::leak(Box::new(Testbed::start_in(dir, &[])))
    }

    fn start_own() -> Testbed {
        let dir = std::env::temp_dir().join(format!("absync-testbed-{}", std::process::id()));
        Testbed::start_in(dir, &["--exchange-schema"])
    }

    fn start_in(dir: PathBuf, options: &[&str]) -> Testbed {
        let out = Command::new(repo_root().join("tests/testbed/up.sh"))
            .arg(&dir)
            .args(options)
            .args(["--owner-pid", &std::process::id().to_string()])
            .arg("--remove-when-done")
            .output()
            .expect("cannot run tests/testbed/up.sh");
        assert!(
            out.status.success(),
            "the test bed did not start ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Testbed::load(&dir, None)
    }

    /// A value from testbed.env; panics naming the key when it is missing.
    pub fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("testbed.env in {} has no {key}", self.dir.display()))
    }

    pub fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.get(key))
    }

    pub fn password(&self, key: &str) -> Secret {
        Secret::new(
            std::fs::read_to_string(self.get(key))
                .unwrap_or_else(|e| panic!("cannot read {key}: {e}")),
        )
    }

    fn endpoint(&self, url: &str, dn: &str, pw_key: &str, ca: &str) -> Endpoint {
        Endpoint {
            urls: vec![self.get(url).to_string()],
            bind_dn: self.get(dn).to_string(),
            password: self.password(pw_key),
            ca_file: Some(self.path(ca)),
            transport: Transport::Ldaps,
            timeout: Duration::from_secs(30),
            failback_after: absync::config::DEFAULT_FAILBACK,
            health: Default::default(),
        }
    }

    /// The source as absync sees it: the read-only, size-limited sync account.
    pub fn source_sync(&self) -> Endpoint {
        self.endpoint(
            "SOURCE_URL",
            "SOURCE_SYNC_DN",
            "SOURCE_SYNC_PASSWORD_FILE",
            "SOURCE_CA",
        )
    }

    /// The source's rootDN, for the harness to change source data.
    pub fn source_admin(&self) -> Endpoint {
        self.endpoint(
            "SOURCE_URL",
            "SOURCE_ADMIN_DN",
            "SOURCE_ADMIN_PASSWORD_FILE",
            "SOURCE_CA",
        )
    }

    /// The target as absync sees it: the least-privilege service account.
    pub fn target_svc(&self) -> Endpoint {
        self.endpoint(
            "TARGET_URL",
            "TARGET_SVC_DN",
            "TARGET_SVC_PASSWORD_FILE",
            "TARGET_CA",
        )
    }

    /// The domain administrator, for the harness only (creating test OUs).
    pub fn target_admin(&self) -> Endpoint {
        self.endpoint(
            "TARGET_URL",
            "TARGET_ADMIN_DN",
            "TARGET_ADMIN_PASSWORD_FILE",
            "TARGET_CA",
        )
    }

    /// Creates an OU of its own for one test under the managed OU, as the
    /// domain administrator, and returns its DN. The service account's rights
    /// on the managed OU are inherited by it.
    pub async fn new_target_ou(&self, name: &str) -> String {
        let rdn = super::unique(name);
        let dn = format!("OU={rdn},{}", self.get("TARGET_OU"));
        let mut admin = Conn::connect(&self.target_admin())
            .await
            .expect("bind to Samba as Administrator");
        admin
            .add(
                &dn,
                vec![
                    ("objectClass".into(), ["organizationalUnit".into()].into()),
                    ("ou".into(), [rdn.clone()].into()),
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("creating test OU {dn}: {e}"));
        admin.unbind().await;
        dn
    }

    /// Loads a generated directory into a subtree of its own under o=nhs
    /// (online, as the rootDN) and returns the subtree's DN.
    pub fn new_source_subtree(&self, name: &str, seed: u64, people: u32, orgs: u32) -> String {
        let base = format!("ou={},{}", super::unique(name), self.get("SOURCE_BASE_DN"));
        let gen = Command::new("python3")
            .arg(repo_root().join("tests/testbed/nhsgen.py"))
            .args(["directory", "--emit-base", "--base", &base])
            .args(["--seed", &seed.to_string()])
            .args(["--people", &people.to_string()])
            .args(["--orgs", &orgs.to_string()])
            .output()
            .expect("run nhsgen.py");
        assert!(
            gen.status.success(),
            "nhsgen.py failed: {}",
            String::from_utf8_lossy(&gen.stderr)
        );
        self.ldapmodify_source(&gen.stdout, true);
        base
    }

    /// Applies LDIF to the source with ldapmodify as the rootDN, over the
    /// plain loopback port (harness traffic only; absync itself uses LDAPS).
    pub fn ldapmodify_source(&self, ldif: &[u8], add: bool) {
        self.ldapmodify_at("SOURCE_LDAP_URL", ldif, add);
    }

    fn ldapmodify_at(&self, url_key: &str, ldif: &[u8], add: bool) {
        use std::io::Write;
        let mut cmd = Command::new("ldapmodify");
        if add {
            cmd.arg("-a");
        }
        let mut child = cmd
            .args(["-H", self.get(url_key), "-x"])
            .args(["-D", self.get("SOURCE_ADMIN_DN")])
            .args(["-y", self.get("SOURCE_ADMIN_PASSWORD_FILE")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ldapmodify (ldap-utils)");
        child.stdin.take().unwrap().write_all(ldif).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ldapmodify on {} failed: {}",
            self.get(url_key),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One server of the replicated test bed, named as `tests/testbed/server.sh`
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Source1,
    Source2,
    Dc1,
    Dc2,
}

impl Server {
    pub const ALL: [Server; 4] = [Server::Source1, Server::Source2, Server::Dc1, Server::Dc2];

    pub fn name(self) -> &'static str {
        match self {
            Server::Source1 => "source1",
            Server::Source2 => "source2",
            Server::Dc1 => "dc1",
            Server::Dc2 => "dc2",
        }
    }

    /// The other server of its side.
    pub fn peer(self) -> Server {
        match self {
            Server::Source1 => Server::Source2,
            Server::Source2 => Server::Source1,
            Server::Dc1 => Server::Dc2,
            Server::Dc2 => Server::Dc1,
        }
    }

    /// Its LDAPS URL's key in testbed.env.
    pub fn url_key(self) -> &'static str {
        match self {
            Server::Source1 => "SOURCE_URL",
            Server::Source2 => "SOURCE2_URL",
            Server::Dc1 => "TARGET_URL",
            Server::Dc2 => "TARGET2_URL",
        }
    }

    fn is_source(self) -> bool {
        matches!(self, Server::Source1 | Server::Source2)
    }
}

/// How long a change may take to reach the other server of its side before
/// the test fails (measured: slapd about 10 ms, Samba under 1 s).
pub const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Held by a failover test from `ensure_all_up` to its end. Failover tests
/// kill servers of the one replicated test bed, so they run one at a time:
/// across test processes through the nextest test group `replicas`
/// (`.config/nextest.toml`), within one process (plain `cargo test`) through
/// this lock.
pub type ReplicaGuard = tokio::sync::MutexGuard<'static, ()>;
static REPLICA_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Testbed {
    /// The replicated test bed (`up.sh --replicas --exchange-schema`): the one
    /// `ABSYNC_TESTBED_REPLICAS` names (as `tests/run` sets it), else one
    /// started for this process and stopped when it exits. Blocks while it
    /// starts (about 30 s): call it from `block_in_place` in async tests.
    pub fn replicated() -> &'static Testbed {
        REPLICATED.get_or_init(|| {
            allow_root();
            let tb = match std::env::var_os("ABSYNC_TESTBED_REPLICAS") {
                Some(p) => Testbed::load(Path::new(&p), Some("ABSYNC_TESTBED_REPLICAS")),
                None => {
                    let dir = std::env::temp_dir()
                        .join(format!("absync-testbed-replicas-{}", std::process::id()));
                    Testbed::start_in(dir, &["--replicas", "--exchange-schema"])
                }
            };
            assert_eq!(
                tb.env.get("TESTBED_REPLICAS").map(String::as_str),
                Some("1"),
                "the test bed in {} was not brought up with up.sh --replicas",
                tb.dir.display()
            );
            tb
        })
    }

    /// Runs `tests/testbed/server.sh DIR ACTION SERVER` and returns its exit
    /// code; panics with its output if it could not do what was asked.
    fn server_sh(&self, action: &str, server: Server) -> i32 {
        let out = Command::new(repo_root().join("tests/testbed/server.sh"))
            .arg(&self.dir)
            .args([action, server.name()])
            .output()
            .expect("cannot run tests/testbed/server.sh");
        let code = out.status.code().unwrap_or(-1);
        assert!(
            code == 0 || (action == "status" && code == 1),
            "server.sh {action} {} failed ({}):\n{}\n{}",
            server.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        code
    }

    /// SIGKILL to the server (Samba: its whole process group).
    pub fn kill(&self, server: Server) {
        self.server_sh("kill", server);
    }

    /// An orderly stop.
    pub fn stop(&self, server: Server) {
        self.server_sh("stop", server);
    }

    /// Starts the same instance again (same address, ports and data) and
    /// waits until LDAPS answers; nothing to do if it already answers.
    pub fn start(&self, server: Server) {
        self.server_sh("start", server);
    }

    /// True if the server runs and answers LDAPS.
    pub fn is_up(&self, server: Server) -> bool {
        self.server_sh("status", server) == 0
    }

    /// The two DCs stop replicating with each other (both must run).
    pub fn partition(&self) {
        self.server_sh("partition", Server::Dc1);
    }

    /// Undoes `partition`, and replicates the domain both ways at once.
    pub fn heal(&self) {
        self.server_sh("heal", Server::Dc1);
    }

    /// Replicates the domain between the DCs both ways now (slapd's
    /// providers need no push).
    pub fn replicate(&self) {
        self.server_sh("replicate", Server::Dc1);
    }

    /// What every failover test calls first: starts whatever an earlier test
    /// left down and heals a partition it left, then holds the replicated
    /// test bed for this test (see `ReplicaGuard`).
    pub async fn ensure_all_up(&self) -> ReplicaGuard {
        let guard = REPLICA_LOCK.lock().await;
        tokio::task::block_in_place(|| {
            for server in Server::ALL {
                self.start(server);
            }
            // server.sh partition leaves this mark; heal removes it.
            if self.dir.join("partitioned").exists() {
                self.heal();
            }
        });
        guard
    }

    /// The administrator on one server: slapd's rootDN, the domain's
    /// Administrator.
    pub fn admin_on(&self, server: Server) -> Endpoint {
        if server.is_source() {
            self.endpoint(
                server.url_key(),
                "SOURCE_ADMIN_DN",
                "SOURCE_ADMIN_PASSWORD_FILE",
                "SOURCE_CA",
            )
        } else {
            self.endpoint(
                server.url_key(),
                "TARGET_ADMIN_DN",
                "TARGET_ADMIN_PASSWORD_FILE",
                "TARGET_CA",
            )
        }
    }

    /// The account absync uses on one server: the read-only sync account on
    /// a slapd, the least-privilege service account on a DC.
    pub fn account_on(&self, server: Server) -> Endpoint {
        if server.is_source() {
            self.endpoint(
                server.url_key(),
                "SOURCE_SYNC_DN",
                "SOURCE_SYNC_PASSWORD_FILE",
                "SOURCE_CA",
            )
        } else {
            self.endpoint(
                server.url_key(),
                "TARGET_SVC_DN",
                "TARGET_SVC_PASSWORD_FILE",
                "TARGET_CA",
            )
        }
    }

    /// Waits until `dn` exists on `on` (read as its administrator over
    /// LDAPS) and returns how long that took; fails the test after
    /// `REPLICATION_TIMEOUT`.
    pub async fn wait_present(&self, on: Server, dn: &str) -> Duration {
        self.wait_for(on, dn, true).await
    }

    /// Waits until `dn` is gone from `on`; as `wait_present`.
    pub async fn wait_absent(&self, on: Server, dn: &str) -> Duration {
        self.wait_for(on, dn, false).await
    }

    async fn wait_for(&self, on: Server, dn: &str, present: bool) -> Duration {
        let start = std::time::Instant::now();
        let mut conn: Option<Conn> = None;
        let mut last = String::from("not read yet");
        loop {
            if conn.is_none() {
                match Conn::connect(&self.admin_on(on)).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => last = format!("cannot connect: {e}"),
                }
            }
            if let Some(c) = conn.as_mut() {
                match c.read(dn, &["1.1"]).await {
                    Ok(found) if found.is_some() == present => return start.elapsed(),
                    Ok(found) => last = format!("present: {}", found.is_some()),
                    Err(e) => {
                        last = format!("read failed: {e}");
                        conn = None;
                    }
                }
            }
            assert!(
                start.elapsed() < REPLICATION_TIMEOUT,
                "{dn} was still {} on {} after {:?} (last: {last})",
                if present { "missing" } else { "there" },
                on.name(),
                REPLICATION_TIMEOUT
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Applies LDIF to one slapd with ldapmodify as the rootDN, over its plain
    /// loopback port (harness traffic only).
    pub fn ldapmodify_on(&self, server: Server, ldif: &[u8], add: bool) {
        let key = match server {
            Server::Source1 => "SOURCE_LDAP_URL",
            Server::Source2 => "SOURCE2_LDAP_URL",
            _ => panic!(
                "ldapmodify_on is for the slapd servers, not {}",
                server.name()
            ),
        };
        self.ldapmodify_at(key, ldif, add);
    }
}

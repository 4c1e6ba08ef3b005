//! The test bed: one slapd (source) and one Samba AD (target) per test run.
//!
//! `ABSYNC_TESTBED` names a running test bed (its directory or its
//! `testbed.env`), as `tests/run` and CI set it. Without it, the first test
//! in this process brings one up with `tests/testbed/up.sh`, torn down when
//! the process exits. A test bed that cannot start fails the test loudly:
//! nothing here ever skips.

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

/// The shared test bed, started on first use.
pub fn testbed() -> &'static Testbed {
    TESTBED.get_or_init(|| {
        allow_root();
        match std::env::var_os("ABSYNC_TESTBED") {
            Some(p) => Testbed::load(Path::new(&p)),
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
    fn load(path: &Path) -> Testbed {
        let file = if path.is_dir() {
            path.join("testbed.env")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "ABSYNC_TESTBED={} but {} cannot be read ({e}); bring a test bed up with \
                 tests/testbed/up.sh DIR, or unset ABSYNC_TESTBED to start one",
                path.display(),
                file.display()
            )
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
        Box::leak(Box::new(Testbed::start_in(dir, false)))
    }

    fn start_own() -> Testbed {
        let dir = std::env::temp_dir().join(format!("absync-testbed-{}", std::process::id()));
        Testbed::start_in(dir, true)
    }

    fn start_in(dir: PathBuf, exchange: bool) -> Testbed {
        let out = Command::new(repo_root().join("tests/testbed/up.sh"))
            .arg(&dir)
            .args(exchange.then_some("--exchange-schema"))
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
        Testbed::load(&dir)
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
        use std::io::Write;
        let mut cmd = Command::new("ldapmodify");
        if add {
            cmd.arg("-a");
        }
        let mut child = cmd
            .args(["-H", self.get("SOURCE_LDAP_URL"), "-x"])
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
            "ldapmodify on the source failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

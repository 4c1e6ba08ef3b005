//! A sync environment of one test's own: a source subtree, a target OU, a
//! state directory, agreements and a config file, and ways to run the
//! `absync` binary and to look at AD independently of absync.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use absync::ldap::Conn;
use ldap3::Scope;

use super::testbed::{repo_root, Testbed};

pub struct SyncEnv {
    pub tb: &'static Testbed,
    /// Source subtree (holds ou=People and ou=Organisations).
    pub source_base: String,
    pub target_ou: String,
    pub dir: PathBuf,
    pub seed: u64,
    pub people: u32,
    pub orgs: u32,
    /// The config's [safety] section. Tests delete at once and without a
    /// threshold unless they are about those rails.
    pub safety: std::sync::Mutex<String>,
}

pub const NO_RAILS: &str =
    "[safety]\ndelete_grace = \"0\"\nmax_deletes = 1000000\nmax_delete_percent = 100\n";

/// What `absync` printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// One agreement for a test: id, organisations, attributes, from, until.
pub type Agreement<'a> = (&'a str, &'a [String], &'a [&'a str], &'a str, &'a str);

/// An object in AD as an independent search sees it.
pub type Objects = BTreeMap<String, BTreeMap<String, Vec<String>>>;

impl SyncEnv {
    /// Generates `people` over `orgs` into a fresh source subtree, makes a
    /// fresh target OU, and writes a config using `mapping`.
    pub async fn new(name: &str, seed: u64, people: u32, orgs: u32, mapping: &str) -> SyncEnv {
        Self::new_on(super::testbed(), name, seed, people, orgs, mapping).await
    }

    /// The same, on a given test bed (a private one, for tests that kill
    /// servers).
    pub async fn new_on(
        tb: &'static Testbed,
        name: &str,
        seed: u64,
        people: u32,
        orgs: u32,
        mapping: &str,
    ) -> SyncEnv {
        let source_base = tb.new_source_subtree(name, seed, people, orgs);
        let target_ou = tb.new_target_ou(name).await;
        let dir = std::env::temp_dir().join(super::unique(&format!("absync-{name}")));
        std::fs::create_dir_all(&dir).unwrap();
        let env = SyncEnv {
            tb,
            source_base,
            target_ou,
            dir,
            seed,
            people,
            orgs,
            safety: std::sync::Mutex::new(NO_RAILS.to_string()),
        };
        env.write_config(mapping, "");
        env
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("absync.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// (Re)writes the config; `extra_source` is appended to [source].
    pub fn write_config(&self, mapping: &str, extra_source: &str) {
        let tb = self.tb;
        let text = format!(
            r#"[source]
url = "{}"
bind_dn = "{}"
password_file = "{}"
ca_file = "{}"
base_dn = "ou=People,{}"
filter = "(&(objectClass=nhsPerson)(!(nhsEntryStatus=leaver)))"
org_attribute = "nhsOdsCode"
anchor_attribute = "entryUUID"
page_size = 200
{extra_source}

[target]
url = "{}"
bind_dn = "{}"
password_file = "{}"
ca_file = "{}"
base_dn = "{}"
anchor_attribute = "adminDescription"

[mapping]
file = "{}"

[agreements]
file = "agreements.toml"

[state]
dir = "state"

{safety}
"#,
            tb.get("SOURCE_URL"),
            tb.get("SOURCE_SYNC_DN"),
            tb.get("SOURCE_SYNC_PASSWORD_FILE"),
            tb.get("SOURCE_CA"),
            self.source_base,
            tb.get("TARGET_URL"),
            tb.get("TARGET_SVC_DN"),
            tb.get("TARGET_SVC_PASSWORD_FILE"),
            tb.get("TARGET_CA"),
            self.target_ou,
            // A bare name is one of the shipped mappings.
            if mapping.contains('/') {
                PathBuf::from(mapping)
            } else {
                repo_root().join("mappings").join(mapping)
            }
            .display(),
            safety = self.safety.lock().unwrap(),
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// The generated organisations' ODS codes, in generation order.
    pub fn org_codes(&self) -> Vec<String> {
        let out = Command::new("python3")
            .arg(repo_root().join("tests/testbed/nhsgen.py"))
            .args(["orgs", "--seed", &self.seed.to_string()])
            .args(["--orgs", &self.orgs.to_string()])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    }

    /// Writes the agreements file: one agreement per (id, orgs, attrs, from, until).
    pub fn write_agreements(&self, agreements: &[Agreement<'_>]) {
        let mut text = String::new();
        for (id, orgs, attrs, from, until) in agreements {
            text.push_str(&format!(
                "[[agreement]]\nid = \"{id}\"\ntitle = \"test agreement {id}\"\norganisations = {orgs:?}\nattributes = {attrs:?}\nvalid_from = {from}\nvalid_until = {until}\n\n"
            ));
        }
        std::fs::write(self.dir.join("agreements.toml"), text).unwrap();
    }

    /// Runs the absync binary with this environment's config.
    pub fn absync(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_absync"))
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("ABSYNC_LOG", "warn")
            .output()
            .expect("run absync");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `absync sync` and asserts it succeeded.
    pub fn sync_ok(&self) -> Run {
        let r = self.absync(&["sync"]);
        assert_eq!(r.code, 0, "absync sync failed: {r:?}");
        r
    }

    /// Every object in the test's OU (not the OU itself), read as the
    /// domain administrator: DN → attribute (lower-case) → values.
    pub async fn ad_objects(&self) -> Objects {
        let entries = self
            .target_search(Scope::OneLevel, "(objectClass=*)", &["*"])
            .await;
        entries
            .into_iter()
            .map(|e| (e.dn, lowered(e.attrs)))
            .collect()
    }

    /// People in the source subtree, read as the rootDN: entryUUID → attrs.
    pub async fn source_people(&self, filter: &str) -> Objects {
        let base = format!("ou=People,{}", self.source_base);
        let entries = search(
            &self.tb.source_admin(),
            &base,
            Scope::OneLevel,
            filter,
            &["*", "entryUUID"],
        )
        .await;
        entries
            .into_iter()
            .map(|e| {
                let mut attrs = lowered(e.attrs);
                attrs.insert("dn".into(), vec![e.dn]);
                (attrs["entryuuid"][0].clone(), attrs)
            })
            .collect()
    }

    /// Applies LDIF to the source as the rootDN.
    pub fn change_source(&self, ldif: &str) {
        self.tb.ldapmodify_source(ldif.as_bytes(), false);
    }

    pub fn snapshot(&self) -> absync::state::Snapshot {
        absync::state::Snapshot::open(&self.state_dir()).unwrap()
    }

    /// The latest run, once it has ended (`None` before the first run or
    /// while it runs): what a test waiting for the daemon polls.
    pub fn latest_ended_run(&self) -> Option<absync::state::runs::Run> {
        self.snapshot()
            .runs(1)
            .ok()?
            .into_iter()
            .next()
            .filter(|r| r.ended_at.is_some())
    }

    /// The latest run's id and the `detail.servers` of its `run ended`
    /// record: the servers it used and each failover.
    pub fn last_run_servers(&self) -> (i64, serde_json::Value) {
        let snap = self.snapshot();
        let run = snap.runs(1).unwrap()[0].id;
        let end = snap
            .stored_where("run_id = ?1 AND op = 'run' AND outcome = 'ended'", &[&run])
            .unwrap()
            .remove(0)
            .record;
        (run, end.detail.unwrap()["servers"].clone())
    }
}

/// Every entry a paged search finds, read over a connection of its own.
async fn search(
    endpoint: &absync::ldap::Endpoint,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[&str],
) -> Vec<ldap3::SearchEntry> {
    let mut conn = Conn::connect(endpoint).await.unwrap();
    let attrs = attrs.iter().map(|a| a.to_string()).collect();
    let mut s = conn
        .paged_search(base, scope, filter, attrs, 500)
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(e) = s.next().await.unwrap() {
        out.push(e);
    }
    s.finish().await.unwrap();
    conn.unbind().await;
    out
}

/// Attribute names in lower case, as the tests look them up.
fn lowered(attrs: std::collections::HashMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    attrs
        .into_iter()
        .map(|(k, v)| (k.to_lowercase(), v))
        .collect()
}

/// The anchor absync wrote on an AD object.
pub fn anchor_of(attrs: &BTreeMap<String, Vec<String>>) -> Option<String> {
    attrs
        .get("admindescription")
        .and_then(|v| v.first())
        .and_then(|v| v.strip_prefix("absync:"))
        .map(str::to_string)
}

impl SyncEnv {
    /// How many objects the test's OU holds (not the OU itself), read as
    /// the domain administrator without attributes: cheap enough to poll
    /// while a sync runs.
    pub async fn ad_count(&self) -> usize {
        self.target_search(Scope::OneLevel, "(objectClass=*)", &["1.1"])
            .await
            .len()
    }

    /// Another environment on the same source subtree with a target OU and
    /// a state directory of its own; write its config and agreements before
    /// running absync with it.
    pub async fn sibling(&self, name: &str) -> SyncEnv {
        let target_ou = self.tb.new_target_ou(name).await;
        let dir = std::env::temp_dir().join(super::unique(&format!("absync-{name}")));
        std::fs::create_dir_all(&dir).unwrap();
        SyncEnv {
            tb: self.tb,
            source_base: self.source_base.clone(),
            target_ou,
            dir,
            seed: self.seed,
            people: self.people,
            orgs: self.orgs,
            safety: std::sync::Mutex::new(NO_RAILS.to_string()),
        }
    }
}

impl SyncEnv {
    /// Makes a journal signing key pair with `absync journal keygen` in
    /// DIR/keys: (private key, public key).
    pub fn keygen(&self) -> (PathBuf, PathBuf) {
        let keys = self.dir.join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let (private, public) = (keys.join("journal.key"), keys.join("journal.pub"));
        let made = self.absync(&[
            "journal",
            "keygen",
            "--private",
            private.to_str().unwrap(),
            "--public",
            public.to_str().unwrap(),
        ]);
        assert_eq!(made.code, 0, "{made:?}");
        (private, public)
    }

    /// Replaces the config's [safety] section.
    pub fn set_safety(&self, safety: &str) {
        *self.safety.lock().unwrap() = safety.to_string();
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        let head = &text[..text.find("[safety]").unwrap_or(text.len())];
        std::fs::write(self.config_path(), format!("{head}{safety}")).unwrap();
    }

    /// Replaces one `key = value` line of the config.
    pub fn set_config_line(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        let mut found = false;
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if !found && l.starts_with(&format!("{key} =")) {
                    found = true;
                    format!("{key} = {value}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        assert!(found, "no {key} in the config");
        std::fs::write(self.config_path(), out.join("\n") + "\n").unwrap();
    }

    /// Creates a quarantine OU below the test's OU and returns its DN.
    pub async fn new_quarantine(&self) -> String {
        let dn = format!("OU=quarantine,{}", self.target_ou);
        let mut admin = Conn::connect(&self.tb.target_admin()).await.unwrap();
        admin
            .add(
                &dn,
                vec![
                    ("objectClass".into(), ["organizationalUnit".into()].into()),
                    ("ou".into(), ["quarantine".into()].into()),
                ],
            )
            .await
            .unwrap();
        dn
    }

    /// Objects with absync's anchor anywhere below the test's OU (quarantine
    /// included): anchor → (DN, objectGUID).
    pub async fn ad_guids(&self) -> BTreeMap<String, (String, Vec<u8>)> {
        let entries = self
            .target_search(
                Scope::Subtree,
                "(adminDescription=absync:*)",
                &["adminDescription", "objectGUID"],
            )
            .await;
        let mut out = BTreeMap::new();
        for e in entries {
            let anchor = e.attrs["adminDescription"][0]
                .strip_prefix("absync:")
                .unwrap()
                .to_string();
            let guid = e.bin_attrs["objectGUID"][0].clone();
            assert!(
                out.insert(anchor.clone(), (e.dn, guid)).is_none(),
                "duplicate anchor {anchor}"
            );
        }
        out
    }

    /// Searches the test's OU as the domain administrator.
    async fn target_search(
        &self,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Vec<ldap3::SearchEntry> {
        search(
            &self.tb.target_admin(),
            &self.target_ou,
            scope,
            filter,
            attrs,
        )
        .await
    }
}

/// Blocking twins of the async checks, for tests that drive a subprocess
/// from a blocking section.
impl SyncEnv {
    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Handle::current().block_on(f)
    }

    pub fn ad_objects_blocking(&self) -> Objects {
        Self::block(self.ad_objects())
    }

    pub fn ad_count_blocking(&self) -> usize {
        Self::block(self.ad_count())
    }

    pub fn source_people_blocking(&self) -> Objects {
        Self::block(self.source_people("(objectClass=nhsPerson)"))
    }
}

impl SyncEnv {
    /// Every object carrying absync's anchor anywhere below the test's OU
    /// (quarantine included), with all its attributes, read as the domain
    /// administrator: anchor → attribute (lower-case) → values, the DN
    /// under "dn". Fails on a duplicate anchor.
    pub async fn owned_objects(&self) -> Objects {
        let entries = self
            .target_search(Scope::Subtree, "(adminDescription=absync:*)", &["*"])
            .await;
        let mut out = BTreeMap::new();
        for e in entries {
            let mut attrs = lowered(e.attrs);
            attrs.insert("dn".into(), vec![e.dn]);
            let anchor = anchor_of(&attrs).unwrap();
            assert!(
                out.insert(anchor.clone(), attrs).is_none(),
                "duplicate anchor {anchor}"
            );
        }
        out
    }

    pub fn owned_objects_blocking(&self) -> Objects {
        Self::block(self.owned_objects())
    }
}

//! The configuration file: parsed as written ([`RawConfig`]), then resolved
//! into a [`Config`] where nothing can be wrong any more (paths made absolute,
//! URLs and DNs checked, passwords read). Every error names the file, the
//! line and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::ldap::{Endpoint, Transport};
use crate::seal::Signer;
use crate::secret::{read_password_file, Secret, SecretError};

/// A problem in one of absync's input files, located.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", file.display(), location(*line, key))]
pub struct FileError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

fn location(line: Option<usize>, key: &Option<String>) -> String {
    match (line, key) {
        (Some(l), Some(k)) => format!(":{l}: {k}"),
        (Some(l), None) => format!(":{l}"),
        (None, Some(k)) => format!(": {k}"),
        (None, None) => String::new(),
    }
}

impl FileError {
    pub fn new(file: &Path, line: Option<usize>, key: Option<&str>, message: String) -> Self {
        FileError {
            file: file.to_path_buf(),
            line,
            key: key.map(str::to_string),
            message,
        }
    }
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Reads and parses a TOML file into `T`, rejecting unknown keys (when `T`
/// says so) and naming the line of any error.
pub fn parse_toml_file<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<(T, String), FileError> {
    use std::io::Read;
    // An input file is small; a huge one is a mistake (or an attack): its
    // size is checked before it is read, and the read stops past the limit
    // (a file that grows, or one that is not a regular file).
    const MAX: u64 = 4 * 1024 * 1024;
    let cannot = |e: std::io::Error| FileError::new(path, None, None, format!("cannot read: {e}"));
    let too_large = |n: u64| {
        FileError::new(
            path,
            None,
            None,
            format!("{n} bytes is too large for a configuration file (at most {MAX})"),
        )
    };
    let file = std::fs::File::open(path).map_err(cannot)?;
    let size = file.metadata().map_err(cannot)?.len();
    if size > MAX {
        return Err(too_large(size));
    }
    let mut text = String::new();
    file.take(MAX + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX {
        return Err(too_large(text.len() as u64));
    }
    // A file that is not TOML at all (a password file given by mistake,
    // say) is described and never quoted: its line, column and what the
    // parser expected there.
    if let Err(e) = toml::from_str::<toml::Table>(&text) {
        return Err(not_toml(path, &text, &e));
    }
    let value = toml::from_str::<T>(&text).map_err(|e| {
        if let Some(field) = missing_field(e.message()) {
            return missing(path, &text, e.span(), field);
        }
        let line = e.span().map(|s| line_of(&text, s.start));
        // TOML without a [table] up to that line (`name = 1234`, one line)
        // may still be a secret: what it says is left out. A document with
        // tables is one of absync's files, a typo named as written.
        let shaped = line.is_some_and(|l| {
            text.lines()
                .take(l)
                .any(|t| t.trim_start().starts_with('['))
        });
        if !shaped {
            return FileError::new(path, line, None, unquoted(e.message()));
        }
        // Name the key written on that line, when there is one.
        let key = line
            .and_then(|l| text.lines().nth(l - 1))
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('#') && !k.starts_with('['));
        FileError::new(path, line, key.as_deref(), e.message().to_string())
    })?;
    Ok((value, text))
}

/// The key serde's "missing field `x`" names. The name is absync's (a
/// field it expects), never text of the file.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split_once('`')
        .map(|(f, _)| f)
}

/// A missing key, named with its section: `[source] base_dn is missing`,
/// at the line of the section's header. The parser's span is the table
/// that lacks the key: a section (its header starts the span), or empty
/// for the top level (a section or key missing there).
fn missing(
    path: &Path,
    text: &str,
    span: Option<std::ops::Range<usize>>,
    field: &str,
) -> FileError {
    // The parser gives the top level an empty span.
    let whole = |s: &std::ops::Range<usize>| s.is_empty();
    let header = span.filter(|s| !whole(s)).and_then(|s| {
        let line = line_of(text, s.start);
        // The header as written (`[source]`, `[[agreement]]`), without a
        // comment after it.
        let head = text.lines().nth(line - 1)?.split('#').next()?.trim();
        (head.starts_with('[') && head.ends_with(']')).then(|| (line, head.to_string()))
    });
    match header {
        Some((line, section)) => FileError::new(
            path,
            Some(line),
            None,
            format!("{section} {field} is missing"),
        ),
        None => FileError::new(
            path,
            None,
            None,
            format!(
                "{field} is missing: the file has no [{field}] section (or top-level {field} key)"
            ),
        ),
    }
}

/// A syntax error: line, column and the parser's words for what it
/// expected, with any text of the file it quotes (a duplicate key's name)
/// left out. No part of the line is shown: the file may be a secret.
fn not_toml(path: &Path, text: &str, e: &toml::de::Error) -> FileError {
    let at = e.span().map_or(0, |s| s.start.min(text.len()));
    let line = line_of(text, at);
    let start = text[..at].rfind('\n').map_or(0, |n| n + 1);
    let column = text[start..at].chars().count() + 1;
    let mut said = String::new();
    let message = e.message().lines().collect::<Vec<_>>().join("; ");
    for (i, part) in message.split('`').enumerate() {
        // Odd parts are quoted: kept only when one character (`=`, `"`)
        // or not from the file.
        if i % 2 == 0 {
            said.push_str(part);
        } else if part.chars().count() <= 1 || !text.contains(part) {
            said.push_str(&format!("`{part}`"));
        }
    }
    let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
    FileError::new(
        path,
        Some(line),
        None,
        format!("column {column}: not TOML: {said} (the line is not shown)"),
    )
}

/// For a file without tables (see [`parse_toml_file`]): serde's message
/// with what the file said left out: `unknown field
/// `x`, expected one of ...` → `unknown field, expected one of ...`;
/// `invalid type: string "x", expected u32` → `invalid type: string,
/// expected u32`. What absync expects is kept.
fn unquoted(message: &str) -> String {
    for lead in ["unknown field `", "unknown variant `"] {
        if let Some(rest) = message.strip_prefix(lead) {
            let after = rest.split_once('`').map_or("", |(_, a)| a);
            return format!("{}{after}", lead.trim_end_matches(" `"));
        }
    }
    for lead in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = message
            .strip_prefix(lead)
            .and_then(|rest| rest.split_once(", expected "))
        {
            let kind = found.split(['"', '`']).next().unwrap_or("").trim();
            return format!("{lead}{kind}, expected {expected}");
        }
    }
    message.to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub source: RawSource,
    pub target: RawTarget,
    pub mapping: RawFileRef,
    pub agreements: RawAgreementsRef,
    pub state: RawState,
    #[serde(default)]
    pub safety: RawSafety,
    #[serde(default)]
    pub journal: RawJournal,
    #[serde(default)]
    pub schedule: RawSchedule,
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub metrics: RawMetrics,
    pub mail_domains: Option<RawMailDomains>,
}

/// `[mail_domains]`: the domains a contact's addresses may be in
/// ([`crate::maildomains`]); without it, any address is copied.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailDomains {
    pub allow: Spanned<Vec<String>>,
    /// "drop" (the default) or "refuse".
    pub outside: Option<Spanned<String>>,
}

/// `[schedule]`: when `absync run` syncs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub interval: Option<Spanned<String>>,
    pub cron: Option<Spanned<String>>,
    pub full_every: Option<Spanned<String>>,
}

/// `[daemon]`: where `absync run` listens for `absync resync`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub socket: Option<Spanned<String>>,
}

/// `[metrics]`: an optional Prometheus endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<Spanned<String>>,
}

/// When the daemon runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every so long, counted from the end of the previous run.
    Interval(Duration),
    /// A cron expression with seconds (sec min hour day month weekday),
    /// evaluated in UTC.
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    /// How long from now until the next run.
    pub fn next_after_now(&self) -> Duration {
        match self {
            Schedule::Interval(d) => *d,
            Schedule::Cron(c) => c
                .upcoming(chrono::Utc)
                .next()
                .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
                .unwrap_or(Duration::from_secs(3600)),
        }
    }
}

/// The daemon's settings, resolved.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub schedule: Schedule,
    /// A full reconcile at least this often.
    pub full_every: Duration,
    /// The Unix socket `absync resync` talks to.
    pub socket: PathBuf,
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `[journal]`: how long records are kept, and the key that signs them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    #[serde(default = "default_retention")]
    pub retention: Spanned<String>,
    /// A retention under one year is refused unless this says so.
    #[serde(default)]
    pub allow_short_retention: bool,
    /// Where pruned records are written first (JSONL, verifiable).
    pub archive_dir: Option<Spanned<String>>,
    /// The private key (PKCS#8 PEM) that signs each run's head and each
    /// prune; outside the state directory.
    pub signing_key: Option<Spanned<String>>,
    /// The same, handed over by systemd (LoadCredentialEncrypted=).
    pub signing_key_credential: Option<Spanned<String>>,
    /// The public key `journal verify` checks with when given none.
    pub public_key: Option<Spanned<String>>,
}

impl Default for RawJournal {
    fn default() -> Self {
        RawJournal {
            retention: default_retention(),
            allow_short_retention: false,
            archive_dir: None,
            signing_key: None,
            signing_key_credential: None,
            public_key: None,
        }
    }
}

fn default_retention() -> Spanned<String> {
    spanned("7y".into())
}

/// `[safety]`: the rails against mass deletion.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSafety {
    #[serde(default = "default_max_deletes")]
    pub max_deletes: u64,
    #[serde(default = "default_max_delete_percent")]
    pub max_delete_percent: Spanned<f64>,
    #[serde(default = "default_delete_grace")]
    pub delete_grace: Spanned<String>,
    pub quarantine_ou: Option<Spanned<String>>,
}

impl Default for RawSafety {
    fn default() -> Self {
        RawSafety {
            max_deletes: default_max_deletes(),
            max_delete_percent: default_max_delete_percent(),
            delete_grace: default_delete_grace(),
            quarantine_ou: None,
        }
    }
}

fn default_max_deletes() -> u64 {
    500
}
fn default_max_delete_percent() -> Spanned<f64> {
    spanned(10.0)
}
fn default_delete_grace() -> Spanned<String> {
    spanned("7d".into())
}

/// Schedules' and timeouts' durations (`30m`, `1h30m`): see [`crate::period`].
pub use crate::period::parse_duration;

/// How long a server that failed is avoided before it is preferred again.
pub const DEFAULT_FAILBACK: Duration = Duration::from_secs(600);
/// How long a change sent to a DC that went down waits for that DC.
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub use crate::period::Period;

/// The safety rails, resolved.
#[derive(Debug, Clone)]
pub struct SafetyConfig {
    pub max_deletes: u64,
    pub max_delete_percent: f64,
    /// How long a removed object stays hidden before it is deleted.
    pub delete_grace: Period,
    /// Where hidden objects are moved; `None` hides in place (mapping [hide]).
    pub quarantine_ou: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// One server; `urls` lists several.
    pub url: Option<Spanned<String>>,
    /// The servers, tried in order.
    pub urls: Option<Spanned<Vec<Spanned<String>>>>,
    /// How long a server that failed is avoided (default 10m).
    pub failback_after: Option<Spanned<String>>,
    pub bind_dn: Spanned<String>,
    pub password_file: Option<Spanned<String>>,
    /// A systemd credential (LoadCredential=) holding the password.
    pub password_credential: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub base_dn: Spanned<String>,
    #[serde(default = "default_source_filter")]
    pub filter: Spanned<String>,
    #[serde(default = "default_org_attribute")]
    pub org_attribute: Spanned<String>,
    #[serde(default = "default_source_anchor")]
    pub anchor_attribute: Spanned<String>,
    #[serde(default = "default_page_size")]
    pub page_size: Spanned<u32>,
    #[serde(default)]
    pub starttls: bool,
    #[serde(default)]
    pub allow_plaintext: bool,
    #[serde(default = "default_timeout")]
    pub timeout_secs: Spanned<u64>,
    /// The same as a duration (`45s`, `1m30s`), instead of `timeout_secs`.
    pub timeout: Option<Spanned<String>>,
    /// Attribute saying whether a person is still in post, and its values
    /// that mean "has left".
    #[serde(default = "default_status_attribute")]
    pub status_attribute: Spanned<String>,
    #[serde(default = "default_leaver_values")]
    pub leaver_values: Vec<String>,
    /// How a run after the first reads only what changed.
    #[serde(default)]
    pub delta: DeltaMode,
    /// `[source.organisations]`: where the organisations' entries are, and
    /// which of their values say an organisation closed.
    pub organisations: Option<RawOrganisations>,
}

/// `[source.organisations]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrganisations {
    pub base_dn: Spanned<String>,
    #[serde(default = "default_any_filter")]
    pub filter: Spanned<String>,
    /// Default: `[source] org_attribute`.
    pub code_attribute: Option<Spanned<String>>,
    pub status_attribute: Spanned<String>,
    #[serde(default = "default_closed_values")]
    pub closed_values: Vec<String>,
    pub successor_attribute: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// One domain controller; `urls` lists several.
    pub url: Option<Spanned<String>>,
    /// The domain controllers, tried in order.
    pub urls: Option<Spanned<Vec<Spanned<String>>>>,
    /// How long a DC that failed is avoided (default 10m).
    pub failback_after: Option<Spanned<String>>,
    /// How long a change sent to a DC that went down waits for that DC to
    /// settle it before it is settled on another (default 1h).
    pub settle_timeout: Option<Spanned<String>>,
    pub bind_dn: Spanned<String>,
    pub password_file: Option<Spanned<String>>,
    /// A systemd credential (LoadCredential=) holding the password.
    pub password_credential: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub base_dn: Spanned<String>,
    #[serde(default = "default_target_anchor")]
    pub anchor_attribute: Spanned<String>,
    #[serde(default = "default_anchor_prefix")]
    pub anchor_prefix: Spanned<String>,
    #[serde(default)]
    pub starttls: bool,
    #[serde(default)]
    pub allow_plaintext: bool,
    #[serde(default = "default_timeout")]
    pub timeout_secs: Spanned<u64>,
    /// The same as a duration (`45s`, `1m30s`), instead of `timeout_secs`.
    pub timeout: Option<Spanned<String>>,
    /// The forest's global catalog (`ldaps://dc1.example:3269`), searched
    /// for address collisions instead of the domain.
    pub global_catalog: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileRef {
    pub file: Spanned<String>,
}

/// `[agreements]`: the file, and how many days before an agreement ends
/// `check`, `status` and every run warn about it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgreementsRef {
    pub file: Spanned<String>,
    #[serde(default = "default_warn_days")]
    pub warn_days: Spanned<u32>,
}

/// Days before an agreement ends from which its end is announced.
pub const DEFAULT_WARN_DAYS: u32 = 30;

fn default_warn_days() -> Spanned<u32> {
    spanned(DEFAULT_WARN_DAYS)
}

/// `[agreements] warn_days`, checked: at most ten years.
fn warn_days(a: &RawAgreementsRef, r: &Resolver<'_>) -> Result<u32, FileError> {
    let d = *a.warn_days.get_ref();
    if d > 3650 {
        return Err(r.err(
            a.warn_days.span(),
            "agreements.warn_days",
            format!("{d} is out of range (0 to 3650 days)"),
        ));
    }
    Ok(d)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: Spanned<String>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_huge_or_malformed_input_file_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("absync-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let huge = dir.join("huge.toml");
        std::fs::write(&huge, "# x\n".repeat(1_500_000)).unwrap();
        let e = super::Config::load(&huge).unwrap_err().to_string();
        assert!(
            e.starts_with(&huge.display().to_string()) && e.contains("too large"),
            "{e}"
        );
        // 64 GiB (sparse): refused from its size, in no time, for each of
        // the three input files.
        let sparse = dir.join("sparse.toml");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        let t = std::time::Instant::now();
        for e in [
            super::Config::load(&sparse).unwrap_err().to_string(),
            crate::engine::map::Mapping::load(&sparse)
                .unwrap_err()
                .to_string(),
            crate::agreements::Agreements::load(&sparse, crate::agreements::today())
                .unwrap_err()
                .to_string(),
        ] {
            assert!(
                e.starts_with(&sparse.display().to_string())
                    && e.contains("68719476736 bytes is too large"),
                "{e}"
            );
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        std::fs::remove_file(&sparse).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[source]\nurl = \"ldaps://x\"\n[source\n").unwrap();
        let e = super::Config::load(&bad).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:3", bad.display())), "{e}");
        // A wrong type is named with its line and key.
        std::fs::write(&bad, "[source]\nurl = \"ldaps://x\"\npage_size = \"big\"\n").unwrap();
        let e = super::Config::load(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:3", bad.display())) && e.contains("page_size"),
            "{e}"
        );
        let missing = dir.join("missing.toml");
        let e = super::Config::load(&missing).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_toml_is_described_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absync.toml");
        let cases = [
            ("hunter2-secret\n", 1, "column 15"),
            ("# comment\nhunter2-secret", 2, "column 15"),
            ("secretprefix=...\n", 1, "column 14"),
            ("secretprefix=hunter2 more\n", 1, "column 14"),
            ("secretprefix = \"hunter2\n", 1, ""),
            ("secretprefix=1\nsecretprefix=2\n", 2, "duplicate key"),
            // TOML, but not ours: neither the key nor the value is quoted.
            (
                "secretprefix = 1234\n",
                1,
                "unknown field, expected one of `source`",
            ),
            (
                "source = \"hunter2\"\n",
                1,
                "invalid type: string, expected struct",
            ),
        ];
        for (text, line, says) in cases {
            std::fs::write(&path, text).unwrap();
            for e in [
                super::Config::load(&path).unwrap_err().to_string(),
                super::ServiceView::load(&path).unwrap_err().to_string(),
            ] {
                assert!(
                    e.starts_with(&format!("{}:{line}", path.display())) && e.contains(says),
                    "{text:?}: {e}"
                );
                for secret in ["hunter2", "secretprefix", "1234", "more"] {
                    assert!(!e.contains(secret), "{text:?}: {e}");
                }
            }
        }
        // A document with tables is one of absync's files: its mistakes
        // are named as written.
        std::fs::write(
            &path,
            "[source]\nurl = \"ldaps://x\"\npage_size = \"big\"\n",
        )
        .unwrap();
        let e = super::Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains(":3: page_size: invalid type: string \"big\""),
            "{e}"
        );
        std::fs::write(&path, "[source]\nurll = \"ldaps://x\"\n").unwrap();
        let e = super::Config::load(&path).unwrap_err().to_string();
        assert!(e.contains(":2: urll: unknown field `urll`"), "{e}");
    }

    /// A whole configuration whose source is `source_url` (plain text
    /// allowed) and whose target's password is `target_password` (a
    /// `password_file = ...` or `password_credential = ...` line).
    pub(super) fn config_with(
        dir: &std::path::Path,
        source_url: &str,
        target_password: &str,
    ) -> std::path::PathBuf {
        for f in ["ca.pem", "m.toml", "a.toml"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        std::fs::write(dir.join("source.pw"), "s\n").unwrap();
        let path = dir.join("absync.toml");
        std::fs::write(
            &path,
            format!(
                "[source]\nurl = \"{source_url}\"\nbind_dn = \"cn=r,o=nhs\"\n\
                 password_file = \"source.pw\"\nallow_plaintext = true\n\
                 base_dn = \"ou=People,o=nhs\"\n\
                 [target]\nurl = \"ldaps://dc.example:636\"\nbind_dn = \"CN=svc,DC=x\"\n\
                 {target_password}\nca_file = \"ca.pem\"\n\
                 base_dn = \"OU=NHS Directory,DC=x\"\n\
                 [mapping]\nfile = \"m.toml\"\n[agreements]\nfile = \"a.toml\"\n\
                 [state]\ndir = \"state\"\n"
            ),
        )
        .unwrap();
        path
    }

    #[test]
    fn an_url_with_user_information_is_refused_naming_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let pw = "password_file = \"source.pw\"";
        let ok = config_with(dir.path(), "ldap://[::1]:3890", pw);
        super::Config::load(&ok).unwrap();
        for url in [
            "ldap://[::1]@0.0.0.0:3890",
            "ldap://127.0.0.1@10.0.0.1",
            "ldap://user:hunter2@[::1]:3890",
            "ldaps://[::1]@dc.example:636/",
            "ldap://[::1]\\\\@0.0.0.0:3890",
        ] {
            let path = config_with(dir.path(), url, pw);
            let e = super::Config::load(&path).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "{}:2: source.url: has user information",
                    path.display()
                )),
                "{url}: {e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
        // An @ after the host (a path) is not user information.
        assert!(!super::has_userinfo("ldap://[::1]:3890/o=x@y"));
    }

    #[test]
    fn mail_domains_are_read_and_checked_naming_key_and_line() {
        use crate::maildomains::Outside;
        let dir = tempfile::tempdir().unwrap();
        let pw = "password_file = \"source.pw\"";
        let path = config_with(dir.path(), "ldap://[::1]:3890", pw);
        let base = std::fs::read_to_string(&path).unwrap();
        assert!(super::Config::load(&path).unwrap().mail_domains.is_none());
        let with = |tail: &str| {
            std::fs::write(&path, format!("{base}[mail_domains]\n{tail}")).unwrap();
            super::Config::load(&path)
        };
        let m = with("allow = [\"NHS.net\", \"nhs.uk\"]\n")
            .unwrap()
            .mail_domains
            .unwrap();
        assert_eq!(m.allowed(), ["nhs.net", "nhs.uk"]);
        assert_eq!(m.outside, Outside::Drop);
        let m = with("allow = [\"nhs.net\"]\noutside = \"refuse\"\n").unwrap();
        assert_eq!(m.mail_domains.unwrap().outside, Outside::Refuse);
        let line = base.lines().count() + 2;
        for (tail, says) in [
            (
                "allow = [\"*.nhs.uk\"]\n",
                format!("{line}: mail_domains.allow: \"*.nhs.uk\": write the domain alone"),
            ),
            (
                "allow = [\"nhs.net\"]\noutside = \"quarantine\"\n",
                format!(
                    "{}: mail_domains.outside: \"quarantine\": use \"drop\" or \"refuse\"",
                    line + 1
                ),
            ),
            (
                "allow = []\n",
                format!("{line}: mail_domains.allow: names no domain"),
            ),
        ] {
            let e = with(tail).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{}:{says}", path.display())),
                "{tail}: {e}"
            );
        }
    }

    /// The configuration of `config_with` with `[target] url = ...`
    /// replaced by `servers` (and whatever else the target section needs).
    fn target_servers(dir: &std::path::Path, servers: &str) -> Result<super::Config, String> {
        let path = config_with(dir, "ldap://[::1]:3890", "password_file = \"source.pw\"");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("url = \"ldaps://dc.example:636\"", servers);
        std::fs::write(&path, text).unwrap();
        super::Config::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn a_side_lists_several_servers_in_order_each_checked() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = target_servers(
            dir.path(),
            "urls = [\"ldaps://dc1.example:636\", \" ldaps://dc2.example:636 \"]\n\
             failback_after = \"2m\"\nsettle_timeout = \"30m\"",
        )
        .unwrap();
        let t = &cfg.target;
        assert_eq!(
            t.endpoint.urls,
            ["ldaps://dc1.example:636", "ldaps://dc2.example:636"]
        );
        assert_eq!(t.endpoint.url(), "ldaps://dc1.example:636");
        assert_eq!(t.endpoint.failback_after, Duration::from_secs(120));
        assert_eq!(t.settle_timeout, Duration::from_secs(1800));
        // One url is a list of one, with the defaults.
        let one = target_servers(dir.path(), "url = \"ldaps://dc1.example:636\"").unwrap();
        assert_eq!(one.target.endpoint.urls, ["ldaps://dc1.example:636"]);
        assert_eq!(one.target.endpoint.failback_after, super::DEFAULT_FAILBACK);
        assert_eq!(one.target.settle_timeout, super::DEFAULT_SETTLE_TIMEOUT);
        let cases = [
            (
                "url = \"ldaps://a:636\"\nurls = [\"ldaps://b:636\"]",
                "target.urls: set url (one server) or urls (several), not both",
            ),
            ("urls = []", "target.urls: is empty"),
            (
                "urls = [\"ldaps://a:636\", \"ldaps://a:636\"]",
                "target.urls[2]: \"ldaps://a:636\" is listed twice",
            ),
            (
                "urls = [\"ldaps://a:636\", \"ldap://b:389\"]",
                "target.urls[2]: \"ldap://b:389\" is plain-text LDAP",
            ),
            (
                "urls = [\"ldaps://a:636\", \"ldaps://u:hunter2@b:636\"]",
                "target.urls[2]: has user information",
            ),
            (
                "urls = [\"ldaps://a:636\"]\nsettle_timeout = \"soon\"",
                "target.settle_timeout: ",
            ),
            ("", "target.urls: [target] url is missing"),
        ];
        for (servers, want) in cases {
            let e = target_servers(dir.path(), servers).unwrap_err();
            assert!(e.contains(want), "{servers}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn a_global_catalog_is_the_targets_account_at_another_url() {
        let dir = tempfile::tempdir().unwrap();
        let pw = "password_file = \"source.pw\"";
        let none = config_with(dir.path(), "ldap://[::1]:3890", pw);
        assert!(super::Config::load(&none)
            .unwrap()
            .target
            .global_catalog
            .is_none());
        let line = format!("{pw}\nglobal_catalog = \" ldaps://dc1.example:3269 \"");
        let path = config_with(dir.path(), "ldap://[::1]:3890", &line);
        let cfg = super::Config::load(&path).unwrap();
        let (t, gc) = (&cfg.target.endpoint, cfg.target.global_catalog.unwrap());
        assert_eq!(gc.url(), "ldaps://dc1.example:3269");
        assert_eq!(gc.transport, crate::ldap::Transport::Ldaps);
        assert_eq!(gc.bind_dn, t.bind_dn);
        assert_eq!(gc.ca_file, t.ca_file);
        assert_eq!(gc.timeout, t.timeout);
        assert_eq!(gc.password.expose(), t.password.expose());
    }

    #[test]
    fn a_global_catalog_url_is_checked_as_the_targets_is() {
        let dir = tempfile::tempdir().unwrap();
        let pw = "password_file = \"source.pw\"";
        let cases = [
            ("ldaps://[::1]@0.0.0.0:3269", "has user information"),
            (
                "ldaps://user:hunter2@dc1.example:3269",
                "has user information",
            ),
            (
                "ldap://dc1.example:3268",
                "\"ldap://dc1.example:3268\" is plain-text LDAP",
            ),
            ("https://dc1.example", "is not an LDAP URL"),
        ];
        for (url, want) in cases {
            let line = format!("{pw}\nglobal_catalog = \"{url}\"");
            let path = config_with(dir.path(), "ldap://[::1]:3890", &line);
            let e = super::Config::load(&path).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{}:11: target.global_catalog: ", path.display()))
                    && e.contains(want),
                "{url}: {e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
        // Plain text when the target allows it (the connection then refuses
        // any address but loopback, as for the target's own URL).
        let line = format!("{pw}\nallow_plaintext = true\nglobal_catalog = \"ldap://[::1]:3268\"");
        let path = config_with(dir.path(), "ldap://[::1]:3890", &line);
        let gc = super::Config::load(&path)
            .unwrap()
            .target
            .global_catalog
            .unwrap();
        assert_eq!(gc.transport, crate::ldap::Transport::Plain);
        let line = format!(
            "{pw}\nallow_plaintext = true\nglobal_catalog = \"ldap://[::1]@10.0.0.1:3268\""
        );
        let path = config_with(dir.path(), "ldap://[::1]:3890", &line);
        let e = super::Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("target.global_catalog: has user information"),
            "{e}"
        );
        let line =
            format!("{pw}\nallow_plaintext = true\nglobal_catalog = \"ldap://10.0.0.1:3268\"");
        let path = config_with(dir.path(), "ldap://[::1]:3890", &line);
        let gc = super::Config::load(&path)
            .unwrap()
            .target
            .global_catalog
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let refused = rt.block_on(crate::ldap::Conn::connect(&gc)).err().unwrap();
        assert!(
            matches!(refused, crate::ldap::LdapError::PlainRefused { .. }),
            "{refused}"
        );
    }

    #[test]
    fn a_credential_name_is_a_plain_file_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "/etc/shadow",
            "../../etc/shadow",
            "a/b",
            "..",
            ".",
            "",
            "a\\u0000b",
        ] {
            let line = format!("password_credential = \"{name}\"");
            let path = config_with(dir.path(), "ldap://[::1]:3890", &line);
            let e = super::Config::load(&path).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "{}:10: target.password_credential: ",
                    path.display()
                )) && e.contains("is not a credential name"),
                "{name}: {e}"
            );
        }
        assert!(super::plain_name("target.pw").is_ok());
        assert!(super::plain_name("..pw").is_ok());
    }

    /// A config whose password files do not exist, with `schedule`.
    fn service_only(name: &str, schedule: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("absync-view-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("absync.toml");
        std::fs::write(
            &path,
            format!(
                "[source]\nurl = \"ldaps://s.example:636\"\nbind_dn = \"cn=r,o=nhs\"\n\
                 password_file = \"/nonexistent/source.pw\"\nca_file = \"/nonexistent/ca.pem\"\n\
                 base_dn = \"ou=People,o=nhs\"\n\
                 [target]\nurl = \"ldaps://dc.example:636\"\nbind_dn = \"CN=svc,DC=x\"\n\
                 password_credential = \"target.pw\"\nca_file = \"/nonexistent/ca.pem\"\n\
                 base_dn = \"OU=NHS Directory,DC=x\"\n\
                 [mapping]\nfile = \"/nonexistent/m.toml\"\n[agreements]\nfile = \"a.toml\"\n\
                 [state]\ndir = \"state\"\n{schedule}\n"
            ),
        )
        .unwrap();
        path
    }

    #[test]
    fn the_daemons_clients_read_no_password_and_no_other_file() {
        let path = service_only("light", "[daemon]\nsocket = \"/run/absync/absync.sock\"");
        let view = super::ServiceView::load(&path).unwrap();
        assert_eq!(view.state_dir, path.parent().unwrap().join("state"));
        assert_eq!(view.target_base_dn, "OU=NHS Directory,DC=x");
        assert_eq!(
            view.service.socket,
            std::path::Path::new("/run/absync/absync.sock")
        );
        assert!(
            matches!(view.service.schedule, super::Schedule::Interval(d) if d == Duration::from_secs(1800))
        );
        assert_eq!(view.service.full_every, Duration::from_secs(7 * 86_400));
        // The whole configuration needs what the view does not.
        let e = super::Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        // A syntax error anywhere is still an error.
        std::fs::write(&path, "[source]\nurl = \n").unwrap();
        assert!(super::ServiceView::load(&path).is_err());
    }

    #[test]
    fn cron_schedules_parse_and_fire_when_they_say() {
        let path = service_only(
            "cron",
            "[schedule]\ncron = \"0 */30 * * * *\"\nfull_every = \"1d\"",
        );
        let view = super::ServiceView::load(&path).unwrap();
        assert_eq!(view.service.full_every, Duration::from_secs(86_400));
        let super::Schedule::Cron(c) = &view.service.schedule else {
            panic!("not a cron schedule: {:?}", view.service.schedule);
        };
        // The next :00 or :30 of the hour, in UTC.
        let next = c.upcoming(chrono::Utc).next().unwrap();
        assert!(chrono::Timelike::minute(&next) % 30 == 0);
        assert_eq!(chrono::Timelike::second(&next), 0);
        let wait = view.service.schedule.next_after_now();
        assert!(wait <= Duration::from_secs(1800), "{wait:?}");
        // Every second: the next run is within a second.
        let every = super::Schedule::Cron(Box::new("* * * * * *".parse().unwrap()));
        assert!(every.next_after_now() <= Duration::from_secs(1));
        // An interval counts from now.
        let interval = super::Schedule::Interval(Duration::from_secs(90));
        assert_eq!(interval.next_after_now(), Duration::from_secs(90));

        for (schedule, line, says) in [
            (
                "[schedule]\ncron = \"*/30 * * * *\"",
                20,
                "not a cron expression with seconds",
            ),
            (
                "[schedule]\ncron = \"0 0 25 * * *\"",
                20,
                "not a cron expression",
            ),
            (
                "[schedule]\ninterval = \"1m\"\ncron = \"0 * * * * *\"",
                21,
                "either interval or cron",
            ),
            ("[schedule]\ninterval = \"0\"", 20, "at least 1s"),
            ("[schedule]\nfull_every = \"7\"", 20, "no unit"),
        ] {
            let path = service_only("bad-cron", schedule);
            let e = super::ServiceView::load(&path).unwrap_err();
            assert_eq!(e.line, Some(line), "{e}");
            assert!(
                e.key.as_deref().unwrap_or("").starts_with("schedule."),
                "{e}"
            );
            assert!(e.message.contains(says), "{schedule}: {e}");
        }
    }
}

fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn default_source_filter() -> Spanned<String> {
    spanned("(objectClass=nhsPerson)".into())
}
fn default_org_attribute() -> Spanned<String> {
    spanned("nhsOdsCode".into())
}
fn default_source_anchor() -> Spanned<String> {
    spanned("entryUUID".into())
}
fn default_target_anchor() -> Spanned<String> {
    spanned("adminDescription".into())
}
fn default_anchor_prefix() -> Spanned<String> {
    spanned("absync:".into())
}
fn default_page_size() -> Spanned<u32> {
    spanned(500)
}
fn default_timeout() -> Spanned<u64> {
    spanned(30)
}
fn default_status_attribute() -> Spanned<String> {
    spanned("nhsEntryStatus".into())
}
fn default_leaver_values() -> Vec<String> {
    vec!["leaver".into()]
}
fn default_any_filter() -> Spanned<String> {
    spanned("(objectClass=*)".into())
}
fn default_closed_values() -> Vec<String> {
    vec!["closed".into()]
}

/// How runs after the first read only what changed in the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaMode {
    /// RFC 4533 when the source offers it (and the anchor is entryUUID),
    /// else `modifyTimestamp`.
    #[default]
    Auto,
    /// RFC 4533 only.
    Sync,
    /// `modifyTimestamp >=` the newest change seen by the last run; deletes
    /// are found by the periodic full pull.
    Timestamp,
    /// Every run reads everything in scope.
    Off,
}

/// The source, resolved.
#[derive(Debug)]
pub struct SourceConfig {
    pub endpoint: Endpoint,
    pub base_dn: String,
    pub filter: String,
    pub org_attribute: String,
    pub anchor_attribute: String,
    pub page_size: u32,
    pub status_attribute: String,
    pub leaver_values: Vec<String>,
    /// How runs after the first read only the changes.
    pub delta: DeltaMode,
    /// Where the organisations' status is read, when configured.
    pub organisations: Option<OrganisationsConfig>,
}

/// `[source.organisations]`, resolved: the organisation entries (under
/// `base_dn`, matching `filter`), the attribute holding an entry's ODS
/// code, the status attribute and its values meaning closed (lower-case),
/// and the attribute naming the successor's ODS code, if the source keeps
/// one.
#[derive(Debug, Clone)]
pub struct OrganisationsConfig {
    pub base_dn: String,
    pub filter: String,
    pub code_attribute: String,
    pub status_attribute: String,
    pub closed_values: Vec<String>,
    pub successor_attribute: Option<String>,
}

/// The target, resolved.
#[derive(Debug)]
pub struct TargetConfig {
    pub endpoint: Endpoint,
    /// The OU absync manages; it touches nothing outside it.
    pub base_dn: String,
    pub anchor_attribute: String,
    pub anchor_prefix: String,
    /// The global catalog the address collision search asks, with the
    /// target's account, CA and timeout; `None`: the domain is searched.
    pub global_catalog: Option<Endpoint>,
    /// How long a change sent to a DC that then failed waits for that DC
    /// (see `engine::apply::recover`).
    pub settle_timeout: Duration,
}

/// The whole configuration, resolved and checked. Not `Clone`: it holds
/// the passwords; the daemon shares one (`Arc`) with its runs.
#[derive(Debug)]
pub struct Config {
    pub file: PathBuf,
    pub source: SourceConfig,
    pub target: TargetConfig,
    pub mapping_file: PathBuf,
    pub agreements_file: PathBuf,
    /// An agreement's end is announced (check, status, each run's log)
    /// from this many days before it (`[agreements] warn_days`).
    pub agreements_warn_days: u32,
    pub state_dir: PathBuf,
    pub safety: SafetyConfig,
    /// Journal records older than this are pruned (the chain stays whole).
    pub journal_retention: Period,
    /// Where pruned records are written first, when set.
    pub journal_archive_dir: Option<PathBuf>,
    /// Signs each run's head and each prune, when configured.
    pub journal_signer: Option<Signer>,
    /// What `journal verify` checks signatures with by default.
    pub journal_public_key: Option<PathBuf>,
    pub service: ServiceConfig,
    /// Things worth telling the admin that do not stop a run.
    pub warnings: Vec<String>,
    /// The mail domains a contact's addresses may be in; `None`: any.
    pub mail_domains: Option<crate::maildomains::MailDomains>,
}

struct Resolver<'a> {
    file: &'a Path,
    dir: &'a Path,
    text: &'a str,
    /// Read the passwords and the signing key (`false`: `check --offline`).
    secrets: bool,
}

impl Resolver<'_> {
    fn err(&self, span: std::ops::Range<usize>, key: &str, message: String) -> FileError {
        let line = (span.end > 0).then(|| line_of(self.text, span.start));
        FileError::new(self.file, line, Some(key), message)
    }

    fn path(&self, v: &Spanned<String>) -> PathBuf {
        let p = Path::new(v.get_ref());
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn existing_file(&self, v: &Spanned<String>, key: &str) -> Result<PathBuf, FileError> {
        let p = self.path(v);
        if !p.is_file() {
            return Err(self.err(
                v.span(),
                key,
                format!("{} does not exist or is not a file", p.display()),
            ));
        }
        Ok(p)
    }

    fn dn(&self, v: &Spanned<String>, key: &str) -> Result<String, FileError> {
        let dn = v.get_ref().trim();
        let well_formed = !dn.is_empty()
            && crate::dn::split_rdns(dn).iter().all(|rdn| {
                rdn.split_once('=')
                    .is_some_and(|(a, _)| !a.trim().is_empty())
            });
        if !well_formed {
            return Err(self.err(
                v.span(),
                key,
                format!("\"{dn}\" is not a distinguished name (expected attr=value,...)"),
            ));
        }
        Ok(dn.to_string())
    }

    fn attr(&self, v: &Spanned<String>, key: &str) -> Result<String, FileError> {
        let a = v.get_ref().trim();
        let ok = !a.is_empty()
            && a.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(self.err(
                v.span(),
                key,
                format!("\"{a}\" is not an LDAP attribute name"),
            ));
        }
        Ok(a.to_string())
    }

    /// The endpoint's password: from `password_file`, or from the systemd
    /// credential `password_credential` (exactly one of them). Without
    /// `secrets`, only which one is given is checked, and the password is
    /// empty.
    fn password(
        &self,
        section: &str,
        password: (&Option<Spanned<String>>, &Option<Spanned<String>>),
        warnings: &mut Vec<String>,
    ) -> Result<Secret, FileError> {
        if !self.secrets {
            return match password {
                (Some(_), None) => Ok(Secret::new(String::new())),
                (None, Some(c)) => {
                    let key = format!("{section}.password_credential");
                    plain_name(c.get_ref()).map_err(|m| self.err(c.span(), &key, m))?;
                    Ok(Secret::new(String::new()))
                }
                _ => Err(FileError::new(
                    self.file,
                    None,
                    Some(&format!("{section}.password_file")),
                    "give exactly one of password_file and password_credential".into(),
                )),
            };
        }
        let (pw_path, pw_span, pw_key) = match password {
            (Some(f), None) => (self.path(f), f.span(), format!("{section}.password_file")),
            (None, Some(c)) => {
                let key = format!("{section}.password_credential");
                plain_name(c.get_ref()).map_err(|m| self.err(c.span(), &key, m))?;
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    self.err(
                        c.span(),
                        &key,
                        "CREDENTIALS_DIRECTORY is not set: a credential is handed over by \
                         systemd (LoadCredential=); outside systemd use password_file"
                            .into(),
                    )
                })?;
                (PathBuf::from(dir).join(c.get_ref()), c.span(), key)
            }
            _ => {
                return Err(FileError::new(
                    self.file,
                    None,
                    Some(&format!("{section}.password_file")),
                    "give exactly one of password_file and password_credential".into(),
                ))
            }
        };
        let (password, warning) = read_password_file(&pw_path).map_err(|e| {
            let msg = match e {
                SecretError::Read { source, .. } => {
                    format!("cannot read {}: {source}", pw_path.display())
                }
                SecretError::Empty { .. } => format!("{} is empty", pw_path.display()),
                other => other.to_string(),
            };
            self.err(pw_span.clone(), &pw_key, msg)
        })?;
        warnings.extend(warning);
        Ok(password)
    }

    /// A side's servers: `url` (one) or `urls` (several, tried in order),
    /// not both, none twice; each with the key errors name.
    fn server_list<'s>(
        &self,
        section: &str,
        url: &'s Option<Spanned<String>>,
        urls: &'s Option<Spanned<Vec<Spanned<String>>>>,
    ) -> Result<Vec<(&'s Spanned<String>, String)>, FileError> {
        let list: Vec<(&Spanned<String>, String)> = match (url, urls) {
            (Some(_), Some(l)) => {
                return Err(self.err(
                    l.span(),
                    &format!("{section}.urls"),
                    "set url (one server) or urls (several), not both".into(),
                ))
            }
            (Some(u), None) => vec![(u, format!("{section}.url"))],
            (None, Some(l)) => l
                .get_ref()
                .iter()
                .enumerate()
                .map(|(i, u)| (u, format!("{section}.urls[{}]", i + 1)))
                .collect(),
            (None, None) => {
                return Err(FileError::new(
                    self.file,
                    None,
                    Some(&format!("{section}.urls")),
                    format!("[{section}] url is missing: name the server (url = \"ldaps://host:636\") or servers (urls = [...])"),
                ))
            }
        };
        if let (None, Some(l)) = (url, urls) {
            if l.get_ref().is_empty() {
                return Err(self.err(
                    l.span(),
                    &format!("{section}.urls"),
                    "is empty: name at least one server".into(),
                ));
            }
        }
        for (i, (u, key)) in list.iter().enumerate() {
            let text = u.get_ref().trim();
            if list[..i].iter().any(|(v, _)| v.get_ref().trim() == text) {
                return Err(self.err(u.span(), key, format!("\"{text}\" is listed twice")));
            }
        }
        Ok(list)
    }

    /// One side's servers, account, CA and timeouts. Every server uses the
    /// same transport (all `ldaps://`, or all `ldap://` with StartTLS).
    #[allow(clippy::too_many_arguments)]
    fn endpoint(
        &self,
        section: &str,
        urls: &[(&Spanned<String>, String)],
        bind_dn: &Spanned<String>,
        password: (&Option<Spanned<String>>, &Option<Spanned<String>>),
        ca_file: &Option<Spanned<String>>,
        starttls: bool,
        allow_plaintext: bool,
        timeout: (&Spanned<u64>, &Option<Spanned<String>>),
        warnings: &mut Vec<String>,
    ) -> Result<Endpoint, FileError> {
        let mut checked = Vec::with_capacity(urls.len());
        let mut transport = None;
        for (url, key) in urls {
            let t = self.transport(section, (url, key), starttls, allow_plaintext)?;
            if transport.is_some_and(|first| first != t) {
                return Err(self.err(
                    url.span(),
                    key,
                    "uses another scheme than the first server: every server of a side is \
                     ldaps://, or every one ldap:// with StartTLS"
                        .into(),
                ));
            }
            transport = Some(t);
            checked.push(url.get_ref().trim().to_string());
        }
        let transport = transport.unwrap_or(Transport::Ldaps);
        let ca = match ca_file {
            Some(c) => Some(self.existing_file(c, &format!("{section}.ca_file"))?),
            None if transport == Transport::Plain => None,
            None => {
                return Err(FileError::new(
                    self.file,
                    None,
                    Some(&format!("{section}.ca_file")),
                    "missing: the PEM file of the CA that signs the server's certificate".into(),
                ))
            }
        };
        let password = self.password(section, password, warnings)?;
        let timeout = self.timeout(section, timeout)?;
        Ok(Endpoint {
            urls: checked,
            bind_dn: self.dn(bind_dn, &format!("{section}.bind_dn"))?,
            password,
            ca_file: ca,
            transport,
            timeout,
            failback_after: DEFAULT_FAILBACK,
            health: Default::default(),
        })
    }

    /// One server's URL checked: no user information, a known scheme, and
    /// plain text only when allowed.
    fn transport(
        &self,
        section: &str,
        (url, url_key): (&Spanned<String>, &str),
        starttls: bool,
        allow_plaintext: bool,
    ) -> Result<Transport, FileError> {
        let u = url.get_ref().trim();
        if has_userinfo(u) {
            // Not quoted: the text before @ may be a password.
            return Err(self.err(
                url.span(),
                url_key,
                "has user information (text before @ in host:port), which is refused: it \
                 would hide the real host (ldap://[::1]@0.0.0.0 connects to 0.0.0.0), and the \
                 account is bind_dn with password_file"
                    .into(),
            ));
        }
        let transport = if u.starts_with("ldaps://") {
            if starttls {
                return Err(self.err(
                    url.span(),
                    &format!("{section}.starttls"),
                    "StartTLS is for ldap:// URLs; this one is ldaps://".into(),
                ));
            }
            Transport::Ldaps
        } else if u.starts_with("ldap://") {
            if starttls {
                Transport::StartTls
            } else if allow_plaintext {
                Transport::Plain
            } else {
                return Err(self.err(
                    url.span(),
                    url_key,
                    format!(
                        "\"{u}\" is plain-text LDAP, which would send the password in clear; \
                         use ldaps://, or set starttls = true, or (loopback tests only) \
                         allow_plaintext = true"
                    ),
                ));
            }
        } else {
            return Err(self.err(
                url.span(),
                url_key,
                format!("\"{u}\" is not an LDAP URL (ldaps://host:port)"),
            ));
        };
        Ok(transport)
    }

    /// An optional duration (`10m`, `1h30m`), at least 1 s; `default` when
    /// not written.
    fn duration_or(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, FileError> {
        let Some(v) = v else {
            return Ok(default);
        };
        let d = parse_duration(v.get_ref()).map_err(|m| self.err(v.span(), key, m))?;
        if d < Duration::from_secs(1) {
            return Err(self.err(v.span(), key, "must be at least 1 second".into()));
        }
        Ok(d)
    }

    /// `timeout_secs = 30` or `timeout = "1m30s"` (not both): at least 1 s.
    fn timeout(
        &self,
        section: &str,
        (secs, text): (&Spanned<u64>, &Option<Spanned<String>>),
    ) -> Result<Duration, FileError> {
        let (d, span, key) = match text {
            // A default's span is empty: `timeout_secs` was not written.
            Some(t) if !secs.span().is_empty() => {
                return Err(self.err(
                    t.span(),
                    &format!("{section}.timeout"),
                    "set timeout or timeout_secs, not both".into(),
                ))
            }
            Some(t) => {
                let key = format!("{section}.timeout");
                let d = parse_duration(t.get_ref()).map_err(|m| self.err(t.span(), &key, m))?;
                (d, t.span(), key)
            }
            None => (
                Duration::from_secs(*secs.get_ref()),
                secs.span(),
                format!("{section}.timeout_secs"),
            ),
        };
        if d < Duration::from_secs(1) {
            return Err(self.err(span, &key, "must be at least 1 second".into()));
        }
        Ok(d)
    }
}

/// A credential's name is a plain file name in `$CREDENTIALS_DIRECTORY`:
/// not empty, not `.` or `..`, without `/` or NUL, so that it cannot name a
/// file outside that directory (`/etc/shadow`, `../../root/x`).
fn plain_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!(
            "{name:?} is not a credential name: give the plain file name systemd hands over \
             in $CREDENTIALS_DIRECTORY (LoadCredential=NAME:...), without / and not . or .."
        ));
    }
    Ok(())
}

/// Whether an URL's authority (after `scheme://`, up to the first `/`, `?`
/// or `#`) holds user information (`user@host`), as URL parsers read it.
fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#'])
        .next()
        .is_some_and(|authority| authority.contains('@'))
}

impl Config {
    /// The containers absync writes in, with what to call them: the target
    /// OU, and the quarantine OU if there is one.
    pub fn containers(&self) -> Vec<(&'static str, &str)> {
        let mut all = vec![("target OU", self.target.base_dn.as_str())];
        all.extend(
            self.safety
                .quarantine_ou
                .as_deref()
                .map(|q| ("quarantine OU", q)),
        );
        all
    }

    /// Loads, parses and resolves a configuration file.
    pub fn load(file: &Path) -> Result<Config, FileError> {
        Config::load_with(file, true)
    }

    /// The same without reading a password or the signing key (for `check
    /// --offline`): every password is empty, which `Conn::connect` refuses
    /// to send, and no signer is set. Everything else is checked as
    /// [`Config::load`] checks it.
    pub fn load_offline(file: &Path) -> Result<Config, FileError> {
        Config::load_with(file, false)
    }

    fn load_with(file: &Path, secrets: bool) -> Result<Config, FileError> {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let (raw, text): (RawConfig, String) = parse_toml_file(&file)?;
        let mut warnings = Vec::new();
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(&file) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                warnings.push(format!(
                    "configuration file {} is readable by every user (mode {mode:04o}); it names \
                     the servers and accounts: chmod o-rwx it",
                    file.display()
                ));
            }
        }
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        let r = Resolver {
            file: &file,
            dir: &dir,
            text: &text,
            secrets,
        };
        let s = &raw.source;
        let mut source_endpoint = r.endpoint(
            "source",
            &r.server_list("source", &s.url, &s.urls)?,
            &s.bind_dn,
            (&s.password_file, &s.password_credential),
            &s.ca_file,
            s.starttls,
            s.allow_plaintext,
            (&s.timeout_secs, &s.timeout),
            &mut warnings,
        )?;
        source_endpoint.failback_after =
            r.duration_or(&s.failback_after, "source.failback_after", DEFAULT_FAILBACK)?;
        let filter = s.filter.get_ref().trim().to_string();
        if ldap3::parse_filter(&filter).is_err() {
            return Err(r.err(
                s.filter.span(),
                "source.filter",
                format!("\"{filter}\" is not a valid LDAP filter (RFC 4515)"),
            ));
        }
        let page_size = *s.page_size.get_ref();
        if !(1..=10_000).contains(&page_size) {
            return Err(r.err(
                s.page_size.span(),
                "source.page_size",
                format!("{page_size} is out of range (1 to 10000)"),
            ));
        }
        let source = SourceConfig {
            endpoint: source_endpoint,
            base_dn: r.dn(&s.base_dn, "source.base_dn")?,
            filter,
            org_attribute: r.attr(&s.org_attribute, "source.org_attribute")?,
            anchor_attribute: r.attr(&s.anchor_attribute, "source.anchor_attribute")?,
            page_size,
            status_attribute: r.attr(&s.status_attribute, "source.status_attribute")?,
            leaver_values: s.leaver_values.iter().map(|v| v.to_lowercase()).collect(),
            delta: s.delta,
            organisations: resolve_organisations(s, &r)?,
        };
        let t = &raw.target;
        let mut target_endpoint = r.endpoint(
            "target",
            &r.server_list("target", &t.url, &t.urls)?,
            &t.bind_dn,
            (&t.password_file, &t.password_credential),
            &t.ca_file,
            t.starttls,
            t.allow_plaintext,
            (&t.timeout_secs, &t.timeout),
            &mut warnings,
        )?;
        let prefix = t.anchor_prefix.get_ref().clone();
        if prefix.is_empty() || prefix.contains(['*', '(', ')', '\\']) {
            return Err(r.err(
                t.anchor_prefix.span(),
                "target.anchor_prefix",
                "must be non-empty, without * ( ) or \\".into(),
            ));
        }
        target_endpoint.failback_after =
            r.duration_or(&t.failback_after, "target.failback_after", DEFAULT_FAILBACK)?;
        let target = TargetConfig {
            settle_timeout: r.duration_or(
                &t.settle_timeout,
                "target.settle_timeout",
                DEFAULT_SETTLE_TIMEOUT,
            )?,
            endpoint: target_endpoint,
            base_dn: r.dn(&t.base_dn, "target.base_dn")?,
            anchor_attribute: r.attr(&t.anchor_attribute, "target.anchor_attribute")?,
            anchor_prefix: prefix,
            global_catalog: resolve_global_catalog(t, &r)?,
        };
        let mapping_file = r.existing_file(&raw.mapping.file, "mapping.file")?;
        let agreements_file = r.existing_file(&raw.agreements.file, "agreements.file")?;
        let state_dir = r.path(&raw.state.dir);
        let sf = &raw.safety;
        let delete_grace = Period::parse(sf.delete_grace.get_ref())
            .map_err(|m| r.err(sf.delete_grace.span(), "safety.delete_grace", m))?;
        let pct = *sf.max_delete_percent.get_ref();
        if !(0.0..=100.0).contains(&pct) {
            return Err(r.err(
                sf.max_delete_percent.span(),
                "safety.max_delete_percent",
                format!("{pct} is not a percentage (0 to 100)"),
            ));
        }
        let quarantine_ou = match &sf.quarantine_ou {
            Some(q) => {
                let dn = r.dn(q, "safety.quarantine_ou")?;
                if crate::dn::normalize(&dn) == crate::dn::normalize(&target.base_dn) {
                    return Err(r.err(
                        q.span(),
                        "safety.quarantine_ou",
                        "must differ from target.base_dn".into(),
                    ));
                }
                Some(dn)
            }
            None => None,
        };
        let safety = SafetyConfig {
            max_deletes: sf.max_deletes,
            max_delete_percent: pct,
            delete_grace,
            quarantine_ou,
        };
        let journal_retention = resolve_retention(&raw.journal, &r)?;
        let journal_archive_dir = raw.journal.archive_dir.as_ref().map(|d| r.path(d));
        let service = resolve_service(&raw, &r, &state_dir)?;
        let journal_signer = match secrets {
            true => resolve_signer(&raw.journal, &r, &state_dir, &mut warnings)?,
            false => None,
        };
        let agreements_warn_days = warn_days(&raw.agreements, &r)?;
        let journal_public_key = match &raw.journal.public_key {
            Some(p) => Some(r.existing_file(p, "journal.public_key")?),
            None => None,
        };
        let mail_domains = resolve_mail_domains(&raw, &r)?;
        Ok(Config {
            file,
            source,
            target,
            mapping_file,
            agreements_file,
            agreements_warn_days,
            state_dir,
            safety,
            journal_retention,
            journal_archive_dir,
            journal_signer,
            journal_public_key,
            service,
            warnings,
            mail_domains,
        })
    }
}

/// `[journal] retention`: a calendar period, more than 0, and at least a
/// year unless `allow_short_retention` says otherwise (records are
/// evidence; `7d` typed for `7y` would erase them).
fn resolve_retention(j: &RawJournal, r: &Resolver<'_>) -> Result<Period, FileError> {
    let (text, span) = (j.retention.get_ref(), j.retention.span());
    let key = "journal.retention";
    let p = Period::parse(text).map_err(|m| r.err(span.clone(), key, m))?;
    if p.is_zero() {
        return Err(r.err(
            span,
            key,
            "must be longer than 0 (records are evidence)".into(),
        ));
    }
    if p.under_a_year() && !j.allow_short_retention {
        return Err(r.err(
            span,
            key,
            format!(
                "\"{}\" is under one year, and pruning deletes evidence for good; \
                 write e.g. \"7y\", or set allow_short_retention = true in [journal] \
                 if records should really go this soon",
                text.trim()
            ),
        ));
    }
    Ok(p)
}

/// `[mail_domains]`, checked: each entry a domain, `outside` drop or refuse.
fn resolve_mail_domains(
    raw: &RawConfig,
    r: &Resolver<'_>,
) -> Result<Option<crate::maildomains::MailDomains>, FileError> {
    use crate::maildomains::{MailDomains, Outside};
    let Some(m) = &raw.mail_domains else {
        return Ok(None);
    };
    let outside = match &m.outside {
        None => Outside::Drop,
        Some(o) => Outside::parse(o.get_ref()).ok_or_else(|| {
            r.err(
                o.span(),
                "mail_domains.outside",
                format!("\"{}\": use \"drop\" or \"refuse\"", o.get_ref()),
            )
        })?,
    };
    MailDomains::new(m.allow.get_ref(), outside)
        .map(Some)
        .map_err(|why| r.err(m.allow.span(), "mail_domains.allow", why))
}

/// `[target] global_catalog`: an endpoint with the target's account,
/// password, CA and timeout. Its URL is checked as `target.url` is (no user
/// information; plain text only when allowed, and then only to loopback);
/// `starttls` applies when it is an `ldap://` URL. The password is read
/// again (an `Endpoint` owns its own); the warnings about its file were
/// given for the target.
/// `[source.organisations]`: DN, filter and attribute names checked like
/// `[source]`'s; at least one closed value.
fn resolve_organisations(
    s: &RawSource,
    r: &Resolver<'_>,
) -> Result<Option<OrganisationsConfig>, FileError> {
    let Some(o) = &s.organisations else {
        return Ok(None);
    };
    let key = |k: &str| format!("source.organisations.{k}");
    let filter = o.filter.get_ref().trim().to_string();
    if ldap3::parse_filter(&filter).is_err() {
        return Err(r.err(
            o.filter.span(),
            &key("filter"),
            format!("\"{filter}\" is not a valid LDAP filter (RFC 4515)"),
        ));
    }
    let closed_values: Vec<String> = o
        .closed_values
        .iter()
        .map(|v| v.trim().to_lowercase())
        .filter(|v| !v.is_empty())
        .collect();
    if closed_values.is_empty() {
        return Err(r.err(
            0..0,
            &key("closed_values"),
            "names no value: list the status values that mean closed".into(),
        ));
    }
    let code = o.code_attribute.as_ref().unwrap_or(&s.org_attribute);
    Ok(Some(OrganisationsConfig {
        base_dn: r.dn(&o.base_dn, &key("base_dn"))?,
        filter,
        code_attribute: r.attr(code, &key("code_attribute"))?,
        status_attribute: r.attr(&o.status_attribute, &key("status_attribute"))?,
        closed_values,
        successor_attribute: o
            .successor_attribute
            .as_ref()
            .map(|a| r.attr(a, &key("successor_attribute")))
            .transpose()?,
    }))
}

fn resolve_global_catalog(t: &RawTarget, r: &Resolver<'_>) -> Result<Option<Endpoint>, FileError> {
    let Some(url) = &t.global_catalog else {
        return Ok(None);
    };
    let starttls = t.starttls && url.get_ref().trim().starts_with("ldap://");
    let endpoint = r.endpoint(
        "target",
        &[(url, "target.global_catalog".to_string())],
        &t.bind_dn,
        (&t.password_file, &t.password_credential),
        &t.ca_file,
        starttls,
        t.allow_plaintext,
        (&t.timeout_secs, &t.timeout),
        &mut Vec::new(),
    )?;
    Ok(Some(endpoint))
}

/// `[journal] signing_key` or `signing_key_credential`: read and parsed. The
/// key may not live in the state directory: whoever can write there could
/// then sign what they forge.
fn resolve_signer(
    j: &RawJournal,
    r: &Resolver<'_>,
    state_dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<Option<Signer>, FileError> {
    let (path, span, key) = match (&j.signing_key, &j.signing_key_credential) {
        (None, None) => return Ok(None),
        (Some(f), None) => (r.path(f), f.span(), "journal.signing_key"),
        (None, Some(c)) => {
            let key = "journal.signing_key_credential";
            plain_name(c.get_ref()).map_err(|m| r.err(c.span(), key, m))?;
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                r.err(
                    c.span(),
                    key,
                    "CREDENTIALS_DIRECTORY is not set: a credential is handed over by systemd \
                     (LoadCredentialEncrypted=); outside systemd use signing_key"
                        .into(),
                )
            })?;
            (PathBuf::from(dir).join(c.get_ref()), c.span(), key)
        }
        (Some(f), Some(_)) => {
            return Err(r.err(
                f.span(),
                "journal.signing_key",
                "give at most one of signing_key and signing_key_credential".into(),
            ))
        }
    };
    let inside = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if inside(&path).starts_with(inside(state_dir)) {
        return Err(r.err(
            span,
            key,
            format!(
                "{} is inside the state directory {}: keep the signing key elsewhere \
                 (whoever can write the state could then sign what they forge)",
                path.display(),
                state_dir.display()
            ),
        ));
    }
    let (text, warning) = read_password_file(&path).map_err(|e| {
        let msg = match e {
            SecretError::Read { source, .. } => format!("cannot read {}: {source}", path.display()),
            SecretError::Empty { .. } => format!("{} is empty", path.display()),
            other => other.to_string().replace("password file", "signing key"),
        };
        r.err(span.clone(), key, msg)
    })?;
    warnings.extend(warning.map(|w| w.replace("password file", "signing key")));
    Signer::from_pem(text.expose())
        .map(Some)
        .map_err(|e| r.err(span, key, format!("{}: {e}", path.display())))
}

/// `[schedule]`, `[daemon]` and `[metrics]`, resolved.
fn resolve_service(
    raw: &RawConfig,
    r: &Resolver<'_>,
    state_dir: &Path,
) -> Result<ServiceConfig, FileError> {
    let sc = &raw.schedule;
    let schedule = match (&sc.interval, &sc.cron) {
        (Some(_), Some(c)) => {
            return Err(r.err(
                c.span(),
                "schedule.cron",
                "give either interval or cron, not both".into(),
            ))
        }
        (None, Some(c)) => {
            let expr = c.get_ref().trim();
            let parsed = <cron::Schedule as std::str::FromStr>::from_str(expr).map_err(|e| {
                r.err(
                    c.span(),
                    "schedule.cron",
                    format!(
                        "\"{expr}\" is not a cron expression with seconds \
                         (sec min hour day month weekday): {e}"
                    ),
                )
            })?;
            Schedule::Cron(Box::new(parsed))
        }
        (Some(i), None) => {
            let d =
                parse_duration(i.get_ref()).map_err(|m| r.err(i.span(), "schedule.interval", m))?;
            if d < Duration::from_secs(1) {
                return Err(r.err(i.span(), "schedule.interval", "must be at least 1s".into()));
            }
            Schedule::Interval(d)
        }
        (None, None) => Schedule::Interval(Duration::from_secs(30 * 60)),
    };
    let full_every = match &sc.full_every {
        Some(f) => {
            parse_duration(f.get_ref()).map_err(|m| r.err(f.span(), "schedule.full_every", m))?
        }
        None => Duration::from_secs(7 * 86_400),
    };
    let socket = match &raw.daemon.socket {
        Some(p) => r.path(p),
        None => match std::env::var_os("RUNTIME_DIRECTORY") {
            Some(dir) => PathBuf::from(dir).join("absync.sock"),
            None => state_dir.join("absync.sock"),
        },
    };
    let metrics_listen = match &raw.metrics.listen {
        Some(l) => Some(l.get_ref().parse().map_err(|e| {
            r.err(
                l.span(),
                "metrics.listen",
                format!("\"{}\" is not an address:port ({e})", l.get_ref()),
            )
        })?),
        None => None,
    };
    Ok(ServiceConfig {
        schedule,
        full_every,
        socket,
        metrics_listen,
    })
}

/// What `absync resync` and `absync status` need from a configuration: the
/// state directory, the target OU's name, the schedule and the daemon's
/// socket. Read without the password files, which an admin's shell can
/// neither read (they are root's) nor be handed (`CREDENTIALS_DIRECTORY`
/// exists only inside the service).
#[derive(Debug, Clone)]
pub struct ServiceView {
    pub file: PathBuf,
    pub state_dir: PathBuf,
    pub target_base_dn: String,
    pub service: ServiceConfig,
    /// `[agreements] warn_days`.
    pub agreements_warn_days: u32,
}

impl ServiceView {
    /// Parses the whole file (a broken one is still an error) but resolves
    /// only what the daemon's clients need; no other file is opened.
    pub fn load(file: &Path) -> Result<ServiceView, FileError> {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let (raw, text): (RawConfig, String) = parse_toml_file(&file)?;
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        let r = Resolver {
            file: &file,
            dir: &dir,
            text: &text,
            secrets: false,
        };
        let state_dir = r.path(&raw.state.dir);
        let service = resolve_service(&raw, &r, &state_dir)?;
        Ok(ServiceView {
            target_base_dn: r.dn(&raw.target.base_dn, "target.base_dn")?,
            agreements_warn_days: warn_days(&raw.agreements, &r)?,
            file,
            state_dir,
            service,
        })
    }
}

/// The durations of the configuration: retention and grace as calendar
/// periods, timeouts and schedules on the clock.
#[cfg(test)]
mod duration_keys {
    use super::tests::config_with;
    use super::{Config, Period};
    use std::time::Duration;

    /// A whole configuration with `extra` appended (new sections) and
    /// `target` lines in `[target]`; the load's result.
    fn load(dir: &std::path::Path, target: &str, extra: &str) -> Result<Config, String> {
        let pw = format!("password_file = \"source.pw\"\n{target}");
        let path = config_with(dir, "ldap://[::1]:3890", pw.trim_end());
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}{extra}\n")).unwrap();
        Config::load(&path).map_err(|e| e.to_string())
    }

    /// `file:line: ` of the last line of `dir`'s config that starts with `key`.
    fn at(dir: &std::path::Path, key: &str) -> String {
        let file = dir.join("absync.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let line = lines.iter().rposition(|l| l.starts_with(key)).unwrap() + 1;
        format!("{}:{line}: ", file.display())
    }

    #[test]
    fn a_bare_m_in_retention_or_grace_is_refused_naming_minutes_and_months() {
        let dir = tempfile::tempdir().unwrap();
        for (extra, key) in [
            ("[journal]\nretention = \"6m\"", "journal.retention"),
            ("[safety]\ndelete_grace = \"6m\"", "safety.delete_grace"),
            (
                "[journal]\nallow_short_retention = true\nretention = \"1y6m\"",
                "journal.retention",
            ),
        ] {
            let e = load(dir.path(), "", extra).unwrap_err();
            let field = key.split('.').nth(1).unwrap();
            assert!(
                e.starts_with(&format!("{}{key}: ", at(dir.path(), field))),
                "{e}"
            );
            assert!(e.contains("minutes") && e.contains("months"), "{e}");
            assert!(e.contains("\"6mo\""), "{e}");
        }
    }

    #[test]
    fn a_retention_under_a_year_needs_the_explicit_setting() {
        let dir = tempfile::tempdir().unwrap();
        for short in ["7d", "52w", "11mo", "1s"] {
            let e = load(
                dir.path(),
                "",
                &format!("[journal]\nretention = \"{short}\""),
            )
            .unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "{}journal.retention: ",
                    at(dir.path(), "retention")
                )) && e.contains("under one year")
                    && e.contains("allow_short_retention = true"),
                "{short}: {e}"
            );
            let allowed =
                format!("[journal]\nretention = \"{short}\"\nallow_short_retention = true");
            let cfg = load(dir.path(), "", &allowed).unwrap();
            assert_eq!(cfg.journal_retention, Period::parse(short).unwrap());
        }
        for long in ["7y", "1y", "12mo", "18mo", "365d"] {
            let cfg = load(
                dir.path(),
                "",
                &format!("[journal]\nretention = \"{long}\""),
            )
            .unwrap();
            assert_eq!(cfg.journal_retention, Period::parse(long).unwrap());
        }
        // The default: seven calendar years.
        let cfg = load(dir.path(), "", "").unwrap();
        assert_eq!(cfg.journal_retention, Period::months(84));
        assert_eq!(cfg.safety.delete_grace, Period::parse("7d").unwrap());
        assert!(cfg.journal_archive_dir.is_none());
        let e = load(dir.path(), "", "[journal]\nretention = \"0\"").unwrap_err();
        assert!(e.contains("longer than 0"), "{e}");
        let cfg = load(dir.path(), "", "[journal]\narchive_dir = \"archive\"").unwrap();
        assert_eq!(cfg.journal_archive_dir, Some(dir.path().join("archive")));
    }

    #[test]
    fn grace_takes_calendar_months() {
        let dir = tempfile::tempdir().unwrap();
        let grace = |g: &str| {
            load(dir.path(), "", &format!("[safety]\ndelete_grace = \"{g}\""))
                .map(|c| c.safety.delete_grace)
        };
        assert_eq!(grace("1mo"), Ok(Period::months(1)));
        assert_eq!(grace("0"), Ok(Period::ZERO));
        assert_eq!(
            grace("2w"),
            Ok(Period::exact(Duration::from_secs(14 * 86_400)))
        );
        assert!(grace("7").unwrap_err().contains("no unit"));
    }

    #[test]
    fn timeouts_take_compound_durations() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = load(dir.path(), "timeout = \"1m30s\"", "").unwrap();
        assert_eq!(cfg.target.endpoint.timeout, Duration::from_secs(90));
        assert_eq!(cfg.source.endpoint.timeout, Duration::from_secs(30));
        let cfg = load(dir.path(), "timeout = \"2m\"", "").unwrap();
        assert_eq!(cfg.target.endpoint.timeout, Duration::from_secs(120));
        let cfg = load(dir.path(), "timeout_secs = 45", "").unwrap();
        assert_eq!(cfg.target.endpoint.timeout, Duration::from_secs(45));
        for (line, says) in [
            (
                "timeout = \"500ms\"",
                "target.timeout: must be at least 1 second",
            ),
            (
                "timeout_secs = 0",
                "target.timeout_secs: must be at least 1 second",
            ),
            ("timeout = \"soon\"", "target.timeout: \"soon\""),
            (
                "timeout_secs = 45\ntimeout = \"1m\"",
                "target.timeout: set timeout or timeout_secs, not both",
            ),
        ] {
            let e = load(dir.path(), line, "").unwrap_err();
            let key = says.split(':').next().unwrap().split('.').nth(1).unwrap();
            assert!(e.starts_with(&at(dir.path(), key)), "{line}: {e}");
            assert!(e.contains(says), "{line}: {e}");
        }
        let cfg = load(
            dir.path(),
            "",
            "[schedule]\ninterval = \"1h30m\"\nfull_every = \"1w 12h\"",
        )
        .unwrap();
        assert!(
            matches!(cfg.service.schedule, super::Schedule::Interval(d) if d == Duration::from_secs(5400))
        );
        assert_eq!(
            cfg.service.full_every,
            Duration::from_secs(7 * 86_400 + 12 * 3600)
        );
    }
}

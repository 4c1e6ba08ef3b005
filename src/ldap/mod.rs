//! The LDAP client both ends use: TLS (rustls) from a CA file, simple bind,
//! paged streaming search, and the write operations, with errors that say
//! which server, what failed and why.
//!
//! It never chases referrals: the search continuation references Active
//! Directory returns from the domain root are collected, not followed.
//!
//! Server data is hostile: ldap3's parsers panic on malformed messages, and
//! `contain` keeps every call into ldap3 from panicking. A malformed message
//! is an [`LdapError::Malformed`] naming the server; the run ends (exit 2).

pub mod contain;
pub mod servers;
pub mod syncrepl;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry, SearchStream};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use self::contain::{guard, Broken};

use crate::secret::Secret;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `ldaps://`: TLS from the first byte.
    Ldaps,
    /// `ldap://` upgraded with the StartTLS extended operation.
    StartTls,
    /// `ldap://` in clear text. Only allowed when explicitly configured, and
    /// only to a loopback address.
    Plain,
}

/// Where and how to connect and bind: one side's servers, in order of
/// preference, and the one account on all of them. Not `Clone`: it holds a
/// password.
#[derive(Debug)]
pub struct Endpoint {
    /// At least one (the configuration refuses an empty list).
    pub urls: Vec<String>,
    pub bind_dn: String,
    pub password: Secret,
    /// PEM file of the CA(s) that sign the server's certificate.
    pub ca_file: Option<PathBuf>,
    pub transport: Transport,
    /// Applies to connecting and to every single operation, per server.
    pub timeout: Duration,
    /// How long a server that failed is avoided before it is tried first
    /// again.
    pub failback_after: Duration,
    /// What each server last did (see [`servers`]).
    pub health: servers::Health,
}

impl Endpoint {
    /// The preferred server: the one errors about the side as a whole name.
    pub fn url(&self) -> &str {
        self.urls.first().map_or("", String::as_str)
    }

    /// Each server's state, in the configured order.
    pub fn states(&self) -> Vec<servers::ServerState> {
        self.health.states(&self.urls)
    }
}

/// A failure talking to a directory server. Each names the server; none
/// carries a password.
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable PEM certificate{detail}")]
    CaInvalid { path: PathBuf, detail: String },
    #[error("{url}: invalid LDAP URL: {detail}")]
    Url { url: String, detail: String },
    #[error(
        "{url}: plain-text LDAP would send the password in clear; use ldaps://, StartTLS, \
         or allow plain text explicitly (loopback only)"
    )]
    PlainRefused { url: String },
    #[error("{url}: cannot connect: {detail}")]
    Connect { url: String, detail: String },
    /// Every server of a side failed; each failure names its server.
    #[error("no server answered ({} tried): {}", tried.len(), join_errors(tried))]
    NoServer { tried: Vec<LdapError> },
    #[error("{url}: TLS handshake failed: {detail}{hint}")]
    Tls {
        url: String,
        detail: String,
        hint: String,
    },
    #[error("{url}: bind as \"{dn}\" refused: {text} (LDAP result {rc})")]
    Bind {
        url: String,
        dn: String,
        rc: u32,
        text: String,
    },
    #[error("{url}: no answer within {secs} s ({what})")]
    Timeout {
        url: String,
        secs: u64,
        what: String,
    },
    #[error("{url}: {op} \"{dn}\" failed: {text} (LDAP result {rc})")]
    Operation {
        url: String,
        op: &'static str,
        dn: String,
        rc: u32,
        text: String,
    },
    #[error("{url}: {what}: {detail}")]
    Protocol {
        url: String,
        what: String,
        detail: String,
    },
    /// The server sent something the LDAP parser cannot read: the
    /// connection is not trusted further, and the run ends.
    #[error("{url}: {what}: malformed message from the server: {detail}")]
    Malformed {
        url: String,
        what: String,
        detail: String,
    },
}

fn join_errors(tried: &[LdapError]) -> String {
    tried
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl LdapError {
    /// Whether another server of the side may do better: the server is
    /// down, unreachable, slow, busy or its TLS is wrong. Not a refused
    /// password (the account is the same on every server, and trying each
    /// one only locks it out sooner), a configuration error, or a server
    /// that sent a malformed message (the run ends).
    pub fn fails_over(&self) -> bool {
        match self {
            LdapError::Connect { .. }
            | LdapError::Tls { .. }
            | LdapError::Timeout { .. }
            | LdapError::Protocol { .. }
            | LdapError::NoServer { .. } => true,
            LdapError::Bind { rc, .. } => *rc != 49,
            LdapError::Operation { rc, .. } => matches!(rc, 51 | 52 | 80 | 81),
            _ => false,
        }
    }

    /// The server the error is about, when it names one.
    pub fn url(&self) -> Option<&str> {
        match self {
            LdapError::Url { url, .. }
            | LdapError::PlainRefused { url }
            | LdapError::Connect { url, .. }
            | LdapError::Tls { url, .. }
            | LdapError::Bind { url, .. }
            | LdapError::Timeout { url, .. }
            | LdapError::Operation { url, .. }
            | LdapError::Protocol { url, .. }
            | LdapError::Malformed { url, .. } => Some(url),
            _ => None,
        }
    }

    /// The LDAP result code of a refused operation, if that is what this is.
    pub fn result_code(&self) -> Option<u32> {
        match self {
            LdapError::Operation { rc, .. } | LdapError::Bind { rc, .. } => Some(*rc),
            _ => None,
        }
    }

    /// Failures of one operation on one entry (the server said no), as
    /// opposed to failures of the connection (which end the run).
    pub fn is_entry_level(&self) -> bool {
        match self {
            // busy (51), unavailable (52), unwilling (53 is per entry),
            // other (80) and the connection-level ones end the run.
            LdapError::Operation { rc, .. } => !matches!(rc, 51 | 52 | 80 | 81),
            _ => false,
        }
    }
}

/// Builds the rustls configuration that trusts exactly the CAs in `ca_file`.
pub fn tls_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, LdapError> {
    let pem = std::fs::read(ca_file).map_err(|source| LdapError::CaFile {
        path: ca_file.to_path_buf(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    let mut detail = String::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        match cert {
            Ok(cert) => {
                if let Err(e) = roots.add(cert) {
                    detail = format!(": {e}");
                }
            }
            Err(e) => detail = format!(": {e}"),
        }
    }
    if roots.is_empty() {
        return Err(LdapError::CaInvalid {
            path: ca_file.to_path_buf(),
            detail,
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::CaInvalid {
            path: ca_file.to_path_buf(),
            detail: format!(": TLS setup: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The host of an LDAP URL (`ldaps://dc1.example.org:636/` gives
/// `dc1.example.org`, `ldaps://[::1]:636` gives `::1`): the name its
/// certificate is verified against. With user information (an `@`, which
/// the configuration refuses) the whole authority is returned.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.contains('@') {
        return host;
    }
    if let Some(h) = host.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    }
}

fn is_loopback_url(url: &str) -> bool {
    let host = url_host(url);
    if host.contains('@') {
        // user@host: the host is after the @ (the configuration refuses it).
        return false;
    }
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Turns ldap3's I/O-level errors into messages an admin can act on:
/// a refused connection, an unknown CA, a certificate for another name.
fn classify_connect_error(ep: &Endpoint, url: &str, err: ldap3::LdapError) -> LdapError {
    let url = url.to_string();
    match err {
        ldap3::LdapError::Io { source } => {
            if let Some(tls) = source
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
            {
                let hint = match tls {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                        match &ep.ca_file {
                            Some(ca) => format!(
                                " (the server's certificate is not signed by a CA in {})",
                                ca.display()
                            ),
                            None => " (no CA file configured)".to_string(),
                        }
                    }
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. },
                    ) => " (the certificate does not name the host in the URL)".to_string(),
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::Expired
                        | rustls::CertificateError::ExpiredContext { .. },
                    ) => " (the server's certificate has expired)".to_string(),
                    _ => String::new(),
                };
                return LdapError::Tls {
                    url,
                    detail: tls.to_string(),
                    hint,
                };
            }
            let detail = match source.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused (is the server running and the port right?)".to_string()
                }
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                    format!("the server closed the connection ({source}); is this the right port for {}?",
                        if url.starts_with("ldaps") { "LDAPS" } else { "LDAP" })
                }
                _ => source.to_string(),
            };
            LdapError::Connect { url, detail }
        }
        ldap3::LdapError::Timeout { .. } => LdapError::Timeout {
            url,
            secs: ep.timeout.as_secs(),
            what: "connecting".into(),
        },
        ldap3::LdapError::UrlParsing { source } => LdapError::Url {
            url,
            detail: source.to_string(),
        },
        ldap3::LdapError::UnknownScheme(s) => LdapError::Url {
            url,
            detail: format!("unknown scheme {s}; use ldaps:// or ldap://"),
        },
        other => LdapError::Connect {
            url,
            detail: other.to_string(),
        },
    }
}

/// An add's attributes: name and values.
pub type AddAttrs = Vec<(String, HashSet<String>)>;

/// An add's attributes as the wire wants them.
fn add_bytes(attrs: AddAttrs) -> Vec<(Vec<u8>, HashSet<Vec<u8>>)> {
    attrs
        .into_iter()
        .map(|(k, v)| {
            (
                k.into_bytes(),
                v.into_iter().map(String::into_bytes).collect(),
            )
        })
        .collect()
}

/// The values of an attribute of an entry, whatever the case the server
/// spelt its name in (`entryUUID`, `entryuuid`).
pub fn values_of(e: &SearchEntry, name: &str) -> Vec<String> {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// An AD object's `objectGUID` in its usual text form
/// (`6b29fc40-ca47-1067-b31d-00dd010662da`: the first three groups are
/// stored little-endian). `None` when the entry has no 16-byte one.
pub fn guid(e: &SearchEntry) -> Option<String> {
    let bytes: Vec<u8> = e
        .bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("objectGUID"))
        .and_then(|(_, v)| v.first().cloned())
        // 16 random bytes are now and then valid UTF-8.
        .or_else(|| first_value(e, "objectGUID").map(String::into_bytes))?;
    let b: [u8; 16] = bytes.try_into().ok()?;
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    ))
}

/// The first value of an attribute of an entry (see [`values_of`]).
pub fn first_value(e: &SearchEntry, name: &str) -> Option<String> {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first().cloned())
}

/// The result code of a write [`Conn::rename_then_modify_send`] did not
/// send (LDAP `other`).
const NOT_SENT: u32 = 80;

/// A write sent by [`Conn::add_send`], [`Conn::modify_send`],
/// [`Conn::delete_send`] or [`Conn::rename_then_modify_send`], its answer
/// not yet read.
pub struct Sent {
    op: &'static str,
    dn: String,
    task: tokio::task::JoinHandle<Result<ldap3::result::Result<ldap3::LdapResult>, String>>,
}

/// A write sent only once the write before it was accepted (see
/// [`Conn::rename_then_modify_send`]). Dropped unread (the run ended
/// first), it is called off: one not yet sent never is.
pub struct SentAfter(Option<Sent>);

impl SentAfter {
    /// The write, to read its answer.
    pub fn into_sent(mut self) -> Sent {
        // Invariant: built holding its write, which only this takes.
        self.0
            .take()
            .expect("a SentAfter holds its write until read")
    }
}

impl Drop for SentAfter {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.task.abort();
        }
    }
}

/// An open, bound connection.
pub struct Conn {
    ldap: ldap3::Ldap,
    url: String,
    timeout: Duration,
    /// Set when a malformed message stopped the connection's driver.
    broken: Broken,
}

/// The outcome of a finished search.
#[derive(Debug, Default)]
pub struct SearchSummary {
    pub entries: u64,
    /// Continuation references the server returned (not followed).
    pub referrals: Vec<String>,
}

/// How many entries a paged search reads ahead of the caller: about two
/// pages, so the server prepares the next page (and the entries are
/// decoded) while the caller works on this one. Bounded: memory holds no
/// more than this, whatever the directory's size.
const READ_AHEAD: usize = 1024;

/// What the read-ahead task passes on.
enum Ahead {
    Entry(SearchEntry),
    Failed(LdapError),
    Done(ldap3::LdapResult),
}

/// A paged search in progress. Entries arrive one at a time, read ahead by
/// at most [`READ_AHEAD`].
pub struct PagedSearch {
    rx: tokio::sync::mpsc::Receiver<Ahead>,
    task: tokio::task::JoinHandle<()>,
    done: Option<ldap3::LdapResult>,
    url: String,
    base: String,
    entries: u64,
    /// The page size, when the page failpoints are armed (the pull's
    /// search): see [`PagedSearch::with_page_failpoints`].
    pages: Option<u64>,
}

impl Drop for PagedSearch {
    fn drop(&mut self) {
        // An abandoned search stops reading.
        self.task.abort();
    }
}

/// Reads the stream into the channel until it ends, fails or the reader
/// goes away. Each wait for the server has the configured timeout.
async fn read_ahead(
    mut stream: SearchStream<'static, String, Vec<String>>,
    tx: tokio::sync::mpsc::Sender<Ahead>,
    link: Link,
    base: String,
    timeout: Duration,
) {
    let what = || format!("search under \"{base}\"");
    loop {
        let next = tokio::time::timeout(timeout, guard(stream.next())).await;
        let item = match next {
            Err(_) => Ahead::Failed(LdapError::Timeout {
                url: link.url.clone(),
                secs: timeout.as_secs(),
                what: format!("searching {base}"),
            }),
            Ok(Err(panic)) => Ahead::Failed(link.malformed(what(), panic)),
            Ok(Ok(Err(e))) => Ahead::Failed(link.failed(what(), e)),
            Ok(Ok(Ok(None))) => break,
            // EntriesOnly drops references and intermediates; checked
            // again: they are not entries.
            Ok(Ok(Ok(Some(re)))) if re.is_ref() || re.is_intermediate() => continue,
            Ok(Ok(Ok(Some(re)))) => match contain::entry(re) {
                Ok(e) => Ahead::Entry(e),
                Err(detail) => Ahead::Failed(link.malformed(what(), detail)),
            },
        };
        let failed = matches!(item, Ahead::Failed(_));
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
    let item = match guard(stream.finish()).await {
        Ok(res) => Ahead::Done(res),
        Err(panic) => Ahead::Failed(link.malformed(what(), panic)),
    };
    let _ = tx.send(item).await;
}

/// A connection's server and whether a malformed message broke it: what
/// turns ldap3's errors into ours.
#[derive(Clone)]
pub(crate) struct Link {
    url: String,
    broken: Broken,
}

impl Link {
    pub(crate) fn malformed(&self, what: String, detail: String) -> LdapError {
        LdapError::Malformed {
            url: self.url.clone(),
            what,
            detail,
        }
    }

    /// An ldap3 error: the malformed message behind it when one stopped
    /// the connection (the error itself then only says it ended).
    pub(crate) fn failed(&self, what: String, e: ldap3::LdapError) -> LdapError {
        match self.broken.get() {
            Some(panic) => self.malformed(what, panic.clone()),
            None => LdapError::Protocol {
                url: self.url.clone(),
                what,
                detail: lost_or(&e),
            },
        }
    }
}

/// ldap3's words for a connection that went away ("op send error: channel
/// closed", "premature end of search stream") said plainly, the library's
/// text kept after them; any other error as it is.
fn lost_or(e: &ldap3::LdapError) -> String {
    let lost = matches!(
        e,
        ldap3::LdapError::OpSend { .. }
            | ldap3::LdapError::EndOfStream
            | ldap3::LdapError::ResultRecv { .. }
    );
    if lost {
        format!("the connection was lost ({e})")
    } else {
        e.to_string()
    }
}

impl PagedSearch {
    /// Arms the failpoints `page-start` (the first entry of a page is about
    /// to be handed over) and `page-end` (every entry of a page has been
    /// taken and the caller asks for more, or the search ended), counted in
    /// pages of `page_size` entries as the server sends them. For the crash
    /// tests; inert unless `ABSYNC_FAILPOINT` names one of them.
    pub fn with_page_failpoints(mut self, page_size: u32) -> Self {
        self.pages = Some(u64::from(page_size.max(1)));
        self
    }

    /// The next entry, or `None` when the search is complete.
    pub async fn next(&mut self) -> Result<Option<SearchEntry>, LdapError> {
        if self.done.is_some() {
            return Ok(None);
        }
        if let Some(p) = self.pages {
            if self.entries > 0 && self.entries.is_multiple_of(p) {
                crate::failpoint::hit("page-end");
            }
        }
        match self.rx.recv().await {
            Some(Ahead::Entry(e)) => {
                if let Some(p) = self.pages {
                    if self.entries.is_multiple_of(p) {
                        crate::failpoint::hit("page-start");
                    }
                }
                self.entries += 1;
                Ok(Some(e))
            }
            Some(Ahead::Failed(e)) => Err(e),
            Some(Ahead::Done(res)) => {
                if let Some(p) = self.pages {
                    // The last page, when it was not a full one.
                    if !self.entries.is_multiple_of(p) {
                        crate::failpoint::hit("page-end");
                    }
                }
                self.done = Some(res);
                Ok(None)
            }
            None => Err(LdapError::Protocol {
                url: self.url.clone(),
                what: format!("search under \"{}\"", self.base),
                detail: "the search ended without a result".into(),
            }),
        }
    }

    /// Ends the search and checks that the server completed it. A search that
    /// stopped early (size or time limit, error) is an error, never a short
    /// but successful read.
    pub async fn finish(mut self) -> Result<SearchSummary, LdapError> {
        while self.done.is_none() {
            if self.next().await?.is_none() && self.done.is_none() {
                break;
            }
        }
        let Some(res) = self.done.take() else {
            return Err(LdapError::Protocol {
                url: self.url.clone(),
                what: format!("search under \"{}\"", self.base),
                detail: "the search ended without a result".into(),
            });
        };
        if res.rc != 0 {
            return Err(LdapError::Operation {
                url: self.url.clone(),
                op: "search under",
                dn: self.base.clone(),
                rc: res.rc,
                text: result_text(res.rc, &res.text),
            });
        }
        Ok(SearchSummary {
            entries: self.entries,
            referrals: res.refs,
        })
    }
}

pub(crate) fn result_text(rc: u32, text: &str) -> String {
    let name = match rc {
        3 => "time limit exceeded",
        4 => "size limit exceeded",
        10 => "referral",
        11 => "administrative limit exceeded",
        16 => "no such attribute",
        17 => "undefined attribute type",
        19 => "constraint violation",
        20 => "attribute or value exists",
        21 => "invalid attribute syntax",
        32 => "no such object",
        34 => "invalid DN syntax",
        49 => "invalid credentials",
        50 => "insufficient access rights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwilling to perform",
        64 => "naming violation",
        65 => "object class violation",
        66 => "not allowed on non-leaf",
        67 => "not allowed on RDN",
        68 => "entry already exists",
        69 => "object class modifications prohibited",
        80 => "other",
        _ => "",
    };
    match (name.is_empty(), text.trim().is_empty()) {
        (true, true) => "no message from the server".to_string(),
        (true, false) => text.trim().to_string(),
        (false, true) => name.to_string(),
        (false, false) => format!("{name}: {}", text.trim()),
    }
}

/// A refused bind's text, with what Active Directory's sub-code (`data
/// NNN` in its message) means, so that an admin does not have to look it up.
fn bind_text(rc: u32, text: &str) -> String {
    let base = result_text(rc, text);
    let meaning = [
        ("data 525", "no such account"),
        ("data 52e", "wrong password"),
        ("data 530", "logon not permitted at this time"),
        ("data 531", "logon not permitted from this workstation"),
        ("data 532", "the password has expired"),
        ("data 533", "the account is disabled"),
        ("data 701", "the account has expired"),
        ("data 773", "the password must be reset"),
        ("data 775", "the account is locked out"),
    ]
    .into_iter()
    .find(|(code, _)| text.to_ascii_lowercase().contains(code));
    match meaning {
        Some((_, m)) if rc == 49 => format!("{base} ({m})"),
        _ => base,
    }
}

impl Conn {
    /// Connects to the first of the side's servers that answers and binds,
    /// in the order [`servers::Health::order`] gives; each failure is
    /// remembered. A failure no other server can mend (a refused password,
    /// a configuration error) ends the attempt at once; when every server
    /// failed, the error names each one.
    pub async fn connect(ep: &Endpoint) -> Result<Conn, LdapError> {
        let mut tried = Vec::new();
        for url in ep.health.order(&ep.urls, ep.failback_after) {
            match Conn::connect_to(ep, &url).await {
                Ok(conn) => {
                    ep.health.up(&url, None);
                    if !tried.is_empty() {
                        tracing::warn!(
                            server = %url,
                            failed = %join_errors(&tried),
                            "connected to another server"
                        );
                    }
                    return Ok(conn);
                }
                Err(e) => {
                    ep.health.down(&url, &e.to_string());
                    if !e.fails_over() {
                        return Err(e);
                    }
                    tried.push(e);
                }
            }
        }
        Err(match tried.len() {
            1 => tried.remove(0),
            _ => LdapError::NoServer { tried },
        })
    }

    /// Connects to one server of the side, sets up TLS as the endpoint
    /// asks (the certificate checked against this server's host name), and
    /// binds.
    pub async fn connect_to(ep: &Endpoint, url: &str) -> Result<Conn, LdapError> {
        // An empty password would be an unauthenticated bind, which servers
        // may accept: never sent (a configuration loaded for `check
        // --offline` holds no password).
        if ep.password.expose().is_empty() {
            return Err(LdapError::Bind {
                url: url.to_string(),
                dn: ep.bind_dn.clone(),
                rc: 49,
                text: "no password (an unauthenticated bind is never sent)".into(),
            });
        }
        let mut settings = LdapConnSettings::new().set_conn_timeout(ep.timeout);
        match ep.transport {
            Transport::Plain => {
                if !is_loopback_url(url) {
                    return Err(LdapError::PlainRefused {
                        url: url.to_string(),
                    });
                }
            }
            Transport::Ldaps | Transport::StartTls => {
                let scheme_ok = match ep.transport {
                    Transport::Ldaps => url.starts_with("ldaps://"),
                    _ => url.starts_with("ldap://"),
                };
                if !scheme_ok {
                    return Err(LdapError::Url {
                        url: url.to_string(),
                        detail: "use ldaps:// for LDAPS, or ldap:// with StartTLS".into(),
                    });
                }
                if let Some(ca) = &ep.ca_file {
                    settings = settings.set_config(tls_config(ca)?);
                }
                settings = settings.set_starttls(ep.transport == Transport::StartTls);
            }
        }
        contain::quiet_ldap3_panics();
        let link = Link {
            url: url.to_string(),
            broken: Broken::default(),
        };
        let (conn, mut ldap) = guard(LdapConnAsync::with_settings(settings, url))
            .await
            .map_err(|panic| link.malformed("connecting".into(), panic))?
            .map_err(|e| classify_connect_error(ep, url, e))?;
        let url = url.to_string();
        tokio::spawn(contain::drive(conn, link.broken.clone()));
        ldap.with_timeout(ep.timeout);
        // The password is passed borrowed (ldap3 encodes it for the wire).
        let res = guard(ldap.simple_bind(&ep.bind_dn, ep.password.expose()))
            .await
            .map_err(|panic| link.malformed("binding".into(), panic))?
            .map_err(|e| match e {
                ldap3::LdapError::Timeout { .. } => LdapError::Timeout {
                    url: url.clone(),
                    secs: ep.timeout.as_secs(),
                    what: "binding".into(),
                },
                _ if link.broken.get().is_some() => link.failed("binding".into(), e),
                other => LdapError::Connect {
                    url: url.clone(),
                    detail: other.to_string(),
                },
            })?;
        if res.rc != 0 {
            return Err(LdapError::Bind {
                url,
                dn: ep.bind_dn.clone(),
                rc: res.rc,
                text: bind_text(res.rc, &res.text),
            });
        }
        Ok(Conn {
            ldap,
            url,
            timeout: ep.timeout,
            broken: link.broken,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A handle on the same connection, for operations other modules build
    /// (the RFC 4533 search).
    pub(crate) fn handle(&self) -> ldap3::Ldap {
        self.ldap.clone()
    }

    /// The server and the state of the connection, for errors.
    pub(crate) fn link(&self) -> Link {
        Link {
            url: self.url.clone(),
            broken: self.broken.clone(),
        }
    }

    /// A handle for the next operation, with the configured timeout (in
    /// ldap3 a timeout applies to one operation only).
    fn op(&self) -> ldap3::Ldap {
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.timeout);
        ldap
    }

    /// Sends one add without waiting for its answer (read it with
    /// [`Self::answer`]): several in flight on one connection keep the
    /// server busy while the caller works.
    pub fn add_send(&self, dn: String, attrs: AddAttrs) -> Sent {
        let attrs = add_bytes(attrs);
        self.send("add", dn, move |mut ldap, dn| async move {
            ldap.add(&dn, attrs).await
        })
    }

    /// Sends one modify without waiting for its answer.
    pub fn modify_send(&self, dn: String, mods: Vec<Mod<String>>) -> Sent {
        self.send("modify", dn, move |mut ldap, dn| async move {
            ldap.modify(&dn, mods).await
        })
    }

    /// Sends one delete without waiting for its answer.
    pub fn delete_send(&self, dn: String) -> Sent {
        self.send("delete", dn, |mut ldap, dn| async move {
            ldap.delete(&dn).await
        })
    }

    /// Sends a rename (`new_parent`: a move) and, when it is accepted, a
    /// modify of the object at its new name `to`, without waiting for
    /// either answer. The modify goes only after the rename's answer: were
    /// the rename refused (the name taken), a modify of `to` would write to
    /// the object holding it. Its [`Sent`] is read only after the rename's
    /// was read as accepted.
    pub fn rename_then_modify_send(
        &self,
        dn: String,
        new_rdn: String,
        new_parent: Option<String>,
        to: String,
        mods: Vec<Mod<String>>,
    ) -> (Sent, Option<SentAfter>) {
        let (done, accepted) = tokio::sync::oneshot::channel::<bool>();
        let rename = self.send("rename", dn, move |mut ldap, dn| async move {
            let res = ldap
                .modifydn(&dn, &new_rdn, true, new_parent.as_deref())
                .await;
            let _ = done.send(matches!(&res, Ok(r) if r.rc == 0));
            res
        });
        if mods.is_empty() {
            return (rename, None);
        }
        let modify = self.send("modify", to, move |mut ldap, to| async move {
            if accepted.await.unwrap_or(false) {
                ldap.modify(&to, mods).await
            } else {
                Ok(ldap3::LdapResult {
                    rc: NOT_SENT,
                    matched: String::new(),
                    text: "not sent: the rename before it was refused".into(),
                    refs: Vec::new(),
                    ctrls: Vec::new(),
                })
            }
        });
        (rename, Some(SentAfter(Some(modify))))
    }

    /// Spawns `write` on a handle of this connection (with the timeout):
    /// ldap3 sends the request at once and the task waits for its answer.
    fn send<Fut>(
        &self,
        op: &'static str,
        dn: String,
        write: impl FnOnce(ldap3::Ldap, String) -> Fut + Send + 'static,
    ) -> Sent
    where
        Fut: std::future::Future<Output = ldap3::result::Result<ldap3::LdapResult>> + Send,
    {
        let ldap = self.op();
        let name = dn.clone();
        Sent {
            op,
            dn,
            task: tokio::spawn(async move { guard(write(ldap, name)).await }),
        }
    }

    /// The outcome of a sent write, waiting for its answer.
    pub async fn answer(&self, sent: Sent) -> Result<(), LdapError> {
        let Sent { op, dn, task } = sent;
        match task.await {
            Ok(Ok(Ok(res))) => self.check(op, &dn, res),
            Ok(Ok(Err(e))) => Err(self.op_error(op, &dn, e)),
            Ok(Err(panic)) => Err(self.link().malformed(format!("{op} \"{dn}\""), panic)),
            Err(e) => Err(LdapError::Protocol {
                url: self.url.clone(),
                what: format!("{op} \"{dn}\""),
                detail: e.to_string(),
            }),
        }
    }

    fn op_error(&self, op: &'static str, dn: &str, e: ldap3::LdapError) -> LdapError {
        match e {
            ldap3::LdapError::Timeout { .. } => LdapError::Timeout {
                url: self.url.clone(),
                secs: self.timeout.as_secs(),
                what: format!("{op} {dn}"),
            },
            other => self.link().failed(format!("{op} \"{dn}\""), other),
        }
    }

    /// Runs one ldap3 operation; a panic in its parsing is a
    /// [`LdapError::Malformed`] for `op` on `dn`.
    async fn guarded<T>(
        &self,
        op: &'static str,
        dn: &str,
        f: impl std::future::Future<Output = ldap3::result::Result<T>>,
    ) -> Result<T, LdapError> {
        match guard(f).await {
            Ok(r) => r.map_err(|e| self.op_error(op, dn, e)),
            Err(panic) => Err(self.link().malformed(format!("{op} \"{dn}\""), panic)),
        }
    }

    fn check(&self, op: &'static str, dn: &str, res: ldap3::LdapResult) -> Result<(), LdapError> {
        if res.rc == 0 {
            Ok(())
        } else {
            Err(LdapError::Operation {
                url: self.url.clone(),
                op,
                dn: dn.to_string(),
                rc: res.rc,
                text: result_text(res.rc, &res.text),
            })
        }
    }

    /// Starts a paged subtree (or other scope) search.
    pub async fn paged_search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: Vec<String>,
        page_size: u32,
    ) -> Result<PagedSearch, LdapError> {
        let page = i32::try_from(page_size.max(1)).unwrap_or(i32::MAX);
        let adapters: Vec<Box<dyn Adapter<'static, String, Vec<String>>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(page)),
        ];
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.timeout);
        let stream = self
            .guarded(
                "search under",
                base,
                ldap.streaming_search_with(adapters, base, scope, filter, attrs),
            )
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let task = tokio::spawn(read_ahead(
            stream,
            tx,
            self.link(),
            base.to_string(),
            self.timeout,
        ));
        Ok(PagedSearch {
            rx,
            task,
            done: None,
            url: self.url.clone(),
            base: base.to_string(),
            entries: 0,
            pages: None,
        })
    }

    /// Reads one entry by DN; `None` when it does not exist.
    pub async fn read(
        &mut self,
        dn: &str,
        attrs: &[&str],
    ) -> Result<Option<SearchEntry>, LdapError> {
        let res = self
            .guarded(
                "read",
                dn,
                self.op().search(dn, Scope::Base, "(objectClass=*)", attrs),
            )
            .await?;
        if res.1.rc == 32 {
            return Ok(None);
        }
        let (entries, result) = (res.0, res.1);
        self.check("read", dn, result)?;
        entries
            .into_iter()
            .find(|e| !e.is_ref() && !e.is_intermediate())
            .map(contain::entry)
            .transpose()
            .map_err(|detail| self.link().malformed(format!("read \"{dn}\""), detail))
    }

    /// The server's own name from its root DSE: an AD DC's `dsServiceName`
    /// (its NTDS Settings object, the same whatever address reaches it);
    /// `None` from a server without one.
    pub async fn server_name(&mut self) -> Result<Option<String>, LdapError> {
        Ok(self
            .read("", &["dsServiceName"])
            .await?
            .and_then(|e| first_value(&e, "dsServiceName")))
    }

    pub async fn add(&mut self, dn: &str, attrs: AddAttrs) -> Result<(), LdapError> {
        self.add_raw(dn, add_bytes(attrs)).await
    }

    /// Adds an entry whose values are bytes (for example a `unicodePwd`).
    pub async fn add_binary(
        &mut self,
        dn: &str,
        attrs: Vec<(&str, Vec<Vec<u8>>)>,
    ) -> Result<(), LdapError> {
        let attrs = attrs
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.into_iter().collect()))
            .collect();
        self.add_raw(dn, attrs).await
    }

    async fn add_raw(
        &mut self,
        dn: &str,
        attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)>,
    ) -> Result<(), LdapError> {
        let res = self.guarded("add", dn, self.op().add(dn, attrs)).await?;
        self.check("add", dn, res)
    }

    pub async fn modify(&mut self, dn: &str, mods: Vec<Mod<String>>) -> Result<(), LdapError> {
        let res = self
            .guarded("modify", dn, self.op().modify(dn, mods))
            .await?;
        self.check("modify", dn, res)
    }

    /// Renames (new RDN) and optionally moves (new parent) an entry.
    pub async fn rename(
        &mut self,
        dn: &str,
        new_rdn: &str,
        new_parent: Option<&str>,
    ) -> Result<(), LdapError> {
        let res = self
            .guarded(
                "rename",
                dn,
                self.op().modifydn(dn, new_rdn, true, new_parent),
            )
            .await?;
        self.check("rename", dn, res)
    }

    pub async fn delete(&mut self, dn: &str) -> Result<(), LdapError> {
        let res = self.guarded("delete", dn, self.op().delete(dn)).await?;
        self.check("delete", dn, res)
    }

    pub async fn unbind(mut self) {
        let _ = guard(self.ldap.unbind()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_guid_reads_as_ad_writes_it() {
        let raw = [
            0x40, 0xfc, 0x29, 0x6b, 0x47, 0xca, 0x67, 0x10, 0xb3, 0x1d, 0x00, 0xdd, 0x01, 0x06,
            0x62, 0xda,
        ];
        let mut e = SearchEntry {
            dn: "CN=x".into(),
            attrs: Default::default(),
            bin_attrs: [("objectGUID".to_string(), vec![raw.to_vec()])].into(),
        };
        assert_eq!(
            guid(&e).as_deref(),
            Some("6b29fc40-ca47-1067-b31d-00dd010662da")
        );
        // Bytes that happen to be UTF-8 arrive as text.
        let ascii = *b"0123456789abcdef";
        e.bin_attrs.clear();
        e.attrs.insert(
            "objectguid".into(),
            vec![String::from_utf8(ascii.to_vec()).unwrap()],
        );
        assert_eq!(
            guid(&e).as_deref(),
            Some("33323130-3534-3736-3839-616263646566")
        );
        e.attrs.insert("objectguid".into(), vec!["short".into()]);
        assert_eq!(guid(&e), None);
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_url("ldap://127.0.0.1:389"));
        assert!(is_loopback_url("ldap://localhost"));
        assert!(is_loopback_url("ldap://[::1]:389/"));
        assert!(!is_loopback_url("ldap://dc1.example.org:389"));
        assert!(!is_loopback_url("ldap://10.0.0.1"));
        assert!(!is_loopback_url("ldap://[::1]@0.0.0.0:389"));
        assert!(!is_loopback_url("ldap://127.0.0.1@10.0.0.1"));
    }

    #[test]
    fn the_host_of_a_url_is_the_name_its_certificate_must_carry() {
        assert_eq!(url_host("ldaps://dc1.example.org:636"), "dc1.example.org");
        assert_eq!(url_host("ldaps://dc1.example.org/"), "dc1.example.org");
        assert_eq!(url_host("ldap://[::1]:389/"), "::1");
        assert_eq!(url_host("ldaps://127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn result_text_names_the_code_and_keeps_server_text() {
        assert_eq!(
            result_text(21, "00000057: title too long"),
            "invalid attribute syntax: 00000057: title too long"
        );
        assert_eq!(result_text(4, ""), "size limit exceeded");
        assert_eq!(result_text(999, ""), "no message from the server");
    }

    #[test]
    fn a_refused_bind_says_what_ads_sub_code_means() {
        let ad = "80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 775, v1db1";
        assert!(bind_text(49, ad).ends_with("data 775, v1db1 (the account is locked out)"));
        assert!(bind_text(49, "data 52e,").ends_with("(wrong password)"));
        assert_eq!(bind_text(49, ""), "invalid credentials");
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let err = tls_config(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("absync-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("junk.pem");
        std::fs::write(&f, "not a certificate").unwrap();
        let err = tls_config(&f).unwrap_err();
        assert!(
            err.to_string().contains("holds no usable PEM certificate"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Benchmark fixture: an LDAPS endpoint that acknowledges every request at
//! once, to measure absync's own cost per write (`bench/run --ceiling`).
//!
//! **It is used only to measure.** It stores nothing: every add, modify,
//! delete, rename and compare succeeds and is forgotten, and every search
//! finds nothing except the root DSE and the entries named with
//! `--entry`. A sync that completes against it proves nothing about a sync
//! (no contact exists afterwards); what it shows is how fast absync can
//! write, journal and snapshot included, when the server costs nothing.
//!
//!   instant_ldap --listen 127.0.0.1:PORT --cert FILE --key FILE
//!                --entry DN [--entry DN]... [--log]
//!
//! - `--listen ADDR` (repeatable): a loopback address and port to serve
//!   LDAPS on. Prints `instant_ldap: listening on ldaps://ADDR` once ready.
//! - `--cert`, `--key`: the server's certificate (PEM, chain) and key.
//! - `--entry DN` (repeatable): an entry a base search finds (the managed
//!   OU: absync checks its containers exist). The domain naming context in
//!   the root DSE is the first entry's trailing `DC=` components.
//! - `--log`: every request's operation (and a search's base and scope)
//!   on stderr, to see what a client asks.
//!
//! Answers, per message ID and in order:
//! - bind: success, whatever the name and password; unbind: the connection
//!   closes; abandon: nothing.
//! - add, modify, delete, modify DN: success; compare: compareTrue.
//! - extended operations: success (StartTLS: protocolError, this is LDAPS).
//! - search: base "" with scope base gives the root DSE (`dsServiceName`,
//!   `defaultNamingContext`, `namingContexts`, `supportedControl`,
//!   `supportedLDAPVersion`, `highestCommittedUSN`, `vendorName`); a base
//!   search of an `--entry` gives that entry; any other base search
//!   noSuchObject; every one-level or subtree search no entries. A paged
//!   results control is answered with an empty cookie (the last page).
//!
//! Each connection is one task that reads what the client sent, answers
//! every complete request in it, and writes the answers in one write, so
//! many requests in flight on one connection cost one read and one write.
//! On SIGINT or SIGTERM it prints how many requests of each kind it
//! answered and exits.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use lber::common::TagClass;
use lber::structure::{StructureTag, PL};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The paged results control (RFC 2696).
const PAGED: &[u8] = b"1.2.840.113556.1.4.319";
/// The StartTLS extended operation.
const STARTTLS: &[u8] = b"1.3.6.1.4.1.1466.20037";
/// The largest request accepted (a client sending more is dropped).
const MAX_MESSAGE: usize = 64 << 20;

/// Result codes sent.
const SUCCESS: u8 = 0;
const PROTOCOL_ERROR: u8 = 2;
const COMPARE_TRUE: u8 = 6;
const NO_SUCH_OBJECT: u8 = 32;

/// Operations, by the tag byte of their protocolOp (RFC 4511, section 4.2).
#[derive(Clone, Copy)]
enum Op {
    Bind = 0,
    Unbind,
    Search,
    Modify,
    Add,
    Delete,
    ModifyDn,
    Compare,
    Abandon,
    Extended,
}

const OP_NAMES: [&str; 10] = [
    "bind", "unbind", "search", "modify", "add", "delete", "modifyDN", "compare", "abandon",
    "extended",
];

impl Op {
    fn of(tag: u8) -> Option<Op> {
        Some(match tag {
            0x60 => Op::Bind,
            0x42 => Op::Unbind,
            0x63 => Op::Search,
            0x66 => Op::Modify,
            0x68 => Op::Add,
            0x4a => Op::Delete,
            0x6c => Op::ModifyDn,
            0x6e => Op::Compare,
            0x50 => Op::Abandon,
            0x77 => Op::Extended,
            _ => return None,
        })
    }
}

/// What the endpoint answers with, shared by every connection.
struct Dir {
    /// The `--entry` DNs, in [`norm`] form, with the DN as given.
    entries: Vec<(String, String)>,
    /// The root DSE's attributes.
    root: Vec<(&'static str, Vec<String>)>,
    log: bool,
    counts: [AtomicU64; 10],
}

struct Args {
    listen: Vec<SocketAddr>,
    cert: PathBuf,
    key: PathBuf,
    entries: Vec<String>,
    log: bool,
}

const USAGE: &str = "usage: instant_ldap --listen ADDR:PORT [--listen ...] --cert FILE \
                     --key FILE --entry DN [--entry DN]... [--log]";

fn args() -> Result<Args, Error> {
    let mut it = std::env::args().skip(1);
    let (mut listen, mut cert, mut key, mut entries, mut log) =
        (Vec::new(), None, None, Vec::new(), false);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--listen" => {
                let v = value()?;
                listen.push(v.parse().map_err(|e| format!("--listen {v}: {e}"))?)
            }
            "--cert" => cert = Some(PathBuf::from(value()?)),
            "--key" => key = Some(PathBuf::from(value()?)),
            "--entry" => entries.push(value()?),
            "--log" => log = true,
            _ => return Err(format!("unknown argument {a}\n{USAGE}").into()),
        }
    }
    match (cert, key) {
        (Some(cert), Some(key)) if !listen.is_empty() && !entries.is_empty() => Ok(Args {
            listen,
            cert,
            key,
            entries,
            log,
        }),
        _ => Err(USAGE.into()),
    }
}

/// A DN compared without regard to case or the spaces around `,` and `=`
/// (enough for the few DNs a benchmark names).
fn norm(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| {
            let (k, v) = rdn.split_once('=').unwrap_or((rdn, ""));
            format!("{}={}", k.trim(), v.trim())
        })
        .collect::<Vec<_>>()
        .join(",")
        .to_lowercase()
}

/// The trailing `DC=` components of `dn`.
fn domain_of(dn: &str) -> String {
    let rdns: Vec<&str> = dn.split(',').map(str::trim).collect();
    let n = rdns
        .iter()
        .rev()
        .take_while(|r| r.len() > 3 && r[..3].eq_ignore_ascii_case("dc="))
        .count();
    rdns[rdns.len() - n..].join(",")
}

impl Dir {
    fn new(args: &Args) -> Dir {
        let domain = domain_of(&args.entries[0]);
        let server = format!(
            "CN=NTDS Settings,CN=INSTANT,CN=Servers,CN=Default-First-Site-Name,CN=Sites,\
             CN=Configuration,{domain}"
        );
        let root = vec![
            ("dsServiceName", vec![server]),
            ("defaultNamingContext", vec![domain.clone()]),
            ("namingContexts", vec![domain]),
            (
                "supportedControl",
                vec![String::from_utf8_lossy(PAGED).into()],
            ),
            ("supportedLDAPVersion", vec!["3".into()]),
            ("highestCommittedUSN", vec!["1".into()]),
            (
                "vendorName",
                vec!["absync instant_ldap (benchmark only: stores nothing)".into()],
            ),
        ];
        Dir {
            entries: args.entries.iter().map(|e| (norm(e), e.clone())).collect(),
            root,
            log: args.log,
            counts: Default::default(),
        }
    }

    fn count(&self, op: Op) {
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn summary(&self) -> String {
        let parts: Vec<String> = OP_NAMES
            .iter()
            .zip(&self.counts)
            .map(|(name, n)| format!("{name} {}", n.load(Ordering::Relaxed)))
            .collect();
        format!("instant_ldap: answered {}", parts.join(", "))
    }
}

// ---- BER: reading the frame and the header, writing with lber ----

/// The tag, header length and content length of the BER element at the
/// start of `buf`; `None` until `buf` holds the whole header.
fn header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, String> {
    let (Some(&tag), Some(&first)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if tag & 0x1f == 0x1f {
        return Err(format!("tag 0x{tag:02x}: multi-byte tags are not LDAP"));
    }
    if first < 0x80 {
        return Ok(Some((tag, 2, first as usize)));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return Err(format!("length form 0x{first:02x} is not supported"));
    }
    let Some(bytes) = buf.get(2..2 + n) else {
        return Ok(None);
    };
    let len = bytes.iter().fold(0usize, |a, &b| (a << 8) | b as usize);
    Ok(Some((tag, 2 + n, len)))
}

/// The complete element at the start of `buf`: its tag, its content and
/// the rest of `buf` after it.
fn element(buf: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (tag, start, len) = header(buf)?.ok_or("truncated element")?;
    let end = start.checked_add(len).filter(|&e| e <= buf.len());
    let end = end.ok_or_else(|| format!("element 0x{tag:02x} overruns its message"))?;
    Ok((tag, &buf[start..end], &buf[end..]))
}

fn prim(class: TagClass, id: u64, bytes: impl Into<Vec<u8>>) -> StructureTag {
    StructureTag {
        class,
        id,
        payload: PL::P(bytes.into()),
    }
}

fn cons(class: TagClass, id: u64, inner: Vec<StructureTag>) -> StructureTag {
    StructureTag {
        class,
        id,
        payload: PL::C(inner),
    }
}

fn octets(bytes: impl Into<Vec<u8>>) -> StructureTag {
    prim(TagClass::Universal, 4, bytes)
}

fn sequence(inner: Vec<StructureTag>) -> StructureTag {
    cons(TagClass::Universal, 16, inner)
}

/// An LDAPResult of `rc` as protocolOp `app` (the response's application
/// tag number).
fn result(app: u64, rc: u8, text: &str) -> StructureTag {
    cons(
        TagClass::Application,
        app,
        vec![
            prim(TagClass::Universal, 10, vec![rc]),
            octets(Vec::new()),
            octets(text),
        ],
    )
}

/// Appends one LDAPMessage to `out`: the request's message ID (its INTEGER
/// content, as sent), the operation and the controls, if any.
fn reply(out: &mut BytesMut, id: &[u8], op: StructureTag, controls: Option<StructureTag>) {
    let mut inner = vec![prim(TagClass::Universal, 2, id), op];
    inner.extend(controls.map(|c| cons(TagClass::Context, 0, vec![c])));
    // Encoding into memory cannot fail (lber's writer only reports the
    // errors of an io::Write, and a Vec's never fails).
    let _ = lber::write::encode_into(out, sequence(inner));
}

// ---- Answers ----

/// What the connection does after a request.
#[derive(PartialEq)]
enum Flow {
    Go,
    Close,
}

/// Answers the LDAPMessage whose content is `msg`, appending to `out`.
fn answer(dir: &Dir, msg: &[u8], out: &mut BytesMut) -> Result<Flow, String> {
    let (tag, id, rest) = element(msg)?;
    if tag != 0x02 {
        return Err(format!("message ID has tag 0x{tag:02x}"));
    }
    let (op_tag, body, controls) = element(rest)?;
    let op = Op::of(op_tag).ok_or_else(|| format!("operation tag 0x{op_tag:02x} unknown"))?;
    dir.count(op);
    if dir.log && !matches!(op, Op::Search) {
        eprintln!("instant_ldap: {}", OP_NAMES[op as usize]);
    }
    match op {
        Op::Unbind => return Ok(Flow::Close),
        Op::Abandon => {}
        Op::Bind => reply(out, id, result(1, SUCCESS, ""), None),
        Op::Modify => reply(out, id, result(7, SUCCESS, ""), None),
        Op::Add => reply(out, id, result(9, SUCCESS, ""), None),
        Op::Delete => reply(out, id, result(11, SUCCESS, ""), None),
        Op::ModifyDn => reply(out, id, result(13, SUCCESS, ""), None),
        Op::Compare => reply(out, id, result(15, COMPARE_TRUE, ""), None),
        Op::Extended => {
            let starttls = element(body).is_ok_and(|(t, oid, _)| t == 0x80 && oid == STARTTLS);
            let rc = if starttls { PROTOCOL_ERROR } else { SUCCESS };
            let text = if starttls { "this is LDAPS" } else { "" };
            reply(out, id, result(24, rc, text), None)
        }
        Op::Search => search(dir, id, body, controls, out)?,
    }
    Ok(Flow::Go)
}

/// Whether `controls` (the `[0]` element after the operation, if any)
/// hold a paged results control.
fn paged(controls: &[u8]) -> Result<bool, String> {
    if controls.is_empty() {
        return Ok(false);
    }
    let (_, mut list, _) = element(controls)?;
    while !list.is_empty() {
        let (_, control, rest) = element(list)?;
        let (_, oid, _) = element(control)?;
        if oid == PAGED {
            return Ok(true);
        }
        list = rest;
    }
    Ok(false)
}

/// The paged results control of the last page: size 0, empty cookie.
fn last_page() -> StructureTag {
    let mut value = BytesMut::new();
    let _ = lber::write::encode_into(
        &mut value,
        sequence(vec![
            prim(TagClass::Universal, 2, vec![0]),
            octets(Vec::new()),
        ]),
    );
    sequence(vec![octets(PAGED), octets(value.to_vec())])
}

/// A SearchResultEntry.
fn entry(dn: &str, attrs: &[(&str, Vec<String>)]) -> StructureTag {
    let list = attrs
        .iter()
        .map(|(name, values)| {
            let set = values.iter().map(|v| octets(v.as_str())).collect();
            sequence(vec![octets(*name), cons(TagClass::Universal, 17, set)])
        })
        .collect();
    cons(TagClass::Application, 4, vec![octets(dn), sequence(list)])
}

/// Answers a search: its base, scope and requested attributes read from
/// `body` (the SearchRequest's content), the entry found if any, then the
/// done with a last-page control when the search was paged.
fn search(
    dir: &Dir,
    id: &[u8],
    body: &[u8],
    controls: &[u8],
    out: &mut BytesMut,
) -> Result<(), String> {
    let (_, base, rest) = element(body)?;
    let (_, scope, rest) = element(rest)?;
    let base = String::from_utf8_lossy(base);
    let is_base = scope == [0];
    if dir.log {
        let scope = if is_base {
            "base"
        } else {
            "one level or subtree"
        };
        eprintln!("instant_ldap: search base \"{base}\" scope {scope}");
    }
    let mut rc = SUCCESS;
    if is_base && base.is_empty() {
        let wanted = requested(rest)?;
        let attrs: Vec<(&str, Vec<String>)> = dir
            .root
            .iter()
            .filter(|(name, _)| {
                wanted
                    .as_ref()
                    .is_none_or(|w| w.contains(&name.to_lowercase()))
            })
            .cloned()
            .collect();
        reply(out, id, entry("", &attrs), None);
    } else if is_base {
        let n = norm(&base);
        match dir.entries.iter().find(|(e, _)| *e == n) {
            Some((_, dn)) => {
                let class = vec!["top".to_string(), "organizationalUnit".to_string()];
                reply(out, id, entry(dn, &[("objectClass", class)]), None);
            }
            None => rc = NO_SUCH_OBJECT,
        }
    }
    let page = paged(controls)?.then(last_page);
    reply(out, id, result(5, rc, ""), page);
    Ok(())
}

/// The attributes a search asks for, lower case (`rest`: the
/// SearchRequest after its scope); `None` for all of them.
fn requested(rest: &[u8]) -> Result<Option<HashSet<String>>, String> {
    let mut rest = rest;
    for _ in 0..5 {
        // derefAliases, sizeLimit, timeLimit, typesOnly, filter
        rest = element(rest)?.2;
    }
    let (_, mut list, _) = element(rest)?;
    let mut names = HashSet::new();
    while !list.is_empty() {
        let (_, name, more) = element(list)?;
        names.insert(String::from_utf8_lossy(name).to_lowercase());
        list = more;
    }
    if names.is_empty() || names.contains("*") {
        return Ok(None);
    }
    Ok(Some(names))
}

// ---- Connections ----

/// Serves one connection until the client unbinds or closes it: reads what
/// arrived, answers every complete request in it, writes the answers at
/// once.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(dir: &Dir, mut s: S) -> Result<(), Error> {
    let mut buf = BytesMut::with_capacity(1 << 16);
    let mut out = BytesMut::with_capacity(1 << 16);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut flow = Flow::Go;
        while flow == Flow::Go {
            let Some((tag, start, len)) = header(&buf)? else {
                break;
            };
            if tag != 0x30 || start + len > MAX_MESSAGE {
                return Err(format!("not an LDAPMessage (tag 0x{tag:02x}, {len} bytes)").into());
            }
            if buf.len() < start + len {
                buf.reserve(start + len - buf.len());
                break;
            }
            let msg = buf.split_to(start + len);
            flow = answer(dir, &msg[start..], &mut out)?;
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            s.flush().await?;
            out.clear();
        }
        if flow == Flow::Close {
            let _ = s.shutdown().await;
            return Ok(());
        }
    }
}

fn acceptor(args: &Args) -> Result<tokio_rustls::TlsAcceptor, Error> {
    let named = |f: &PathBuf, e: &dyn std::fmt::Display| format!("{}: {e}", f.display());
    let certs = CertificateDer::pem_file_iter(&args.cert)
        .map_err(|e| named(&args.cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named(&args.cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(&args.key).map_err(|e| named(&args.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn listen(addr: SocketAddr, dir: Arc<Dir>, tls: tokio_rustls::TlsAcceptor) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("instant_ldap: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("instant_ldap: listening on ldaps://{addr}");
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (dir, tls) = (dir.clone(), tls.clone());
        tokio::spawn(async move {
            let done = match tls.accept(tcp).await {
                Ok(s) => serve(&dir, s).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = done {
                eprintln!("instant_ldap: connection dropped: {e}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = args()?;
    let tls = acceptor(&args)?;
    let dir = Arc::new(Dir::new(&args));
    for addr in &args.listen {
        if !addr.ip().is_loopback() {
            return Err(format!("{addr} is not a loopback address").into());
        }
        tokio::spawn(listen(*addr, dir.clone(), tls.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("{}", dir.summary());
    Ok(())
}

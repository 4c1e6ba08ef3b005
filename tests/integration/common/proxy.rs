//! A TCP proxy that cuts every connection after the server has sent a given
//! number of bytes: a source that drops the connection mid-search.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Listens on 127.0.0.1 and forwards to `upstream`; returns the port.
pub async fn cut_after(upstream: SocketAddr, server_bytes: usize) -> u16 {
    forward_on("127.0.0.1", upstream, server_bytes).await
}

/// Listens on `ip` (any loopback address) and forwards to `upstream`,
/// cutting after `server_bytes`; returns the port.
pub async fn forward_on(ip: &str, upstream: SocketAddr, server_bytes: usize) -> u16 {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(forward(client, upstream, server_bytes));
        }
    });
    port
}

async fn forward(client: TcpStream, upstream: SocketAddr, limit: usize) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    });
    let mut sent = 0;
    let mut buf = vec![0u8; 4096];
    while sent < limit {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(limit - sent),
        };
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n;
    }
    // Cut: both directions close.
    up.abort();
    let _ = cw.shutdown().await;
}

/// Accepts connections and never answers: a server that stalls.
pub async fn stall() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((client, _)) = listener.accept().await {
            held.push(client);
        }
    });
    port
}

/// A TLS-terminating LDAP proxy on `ip` in front of the LDAPS server
/// `upstream`: it presents `cert`/`key` to the client, speaks TLS to the
/// server (trusting `ca`), and forwards every request, except the
/// `nth` (1-based) request with the BER tag `op` (0x66 modify, 0x68 add,
/// 0x6c modify DN, 0x4a delete), which it answers itself with result code
/// `rc` and the diagnostic `text`, or, with `rc` 0, never answers (a
/// server that stalls in the middle of a run). Returns the port.
pub struct Refuse {
    pub op: u8,
    pub nth: usize,
    pub rc: u8,
    pub text: &'static str,
}

pub async fn answer_on(
    ip: &str,
    upstream: SocketAddr,
    upstream_name: &str,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    refuse: Refuse,
) -> u16 {
    use rustls_pki_types::ServerName;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let (acceptor, connector) = tls_ends(ca, cert, key);
    let name = ServerName::try_from(upstream_name.to_string()).unwrap();
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let refuse = Arc::new(refuse);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, connector, name) = (acceptor.clone(), connector.clone(), name.clone());
            let (seen, refuse) = (seen.clone(), refuse.clone());
            tokio::spawn(async move {
                let Some((client, server)) =
                    bridge(&acceptor, &connector, name, client, upstream).await
                else {
                    return;
                };
                let (mut cr, cw) = tokio::io::split(client);
                let (mut sr, mut sw) = tokio::io::split(server);
                let cw = Arc::new(tokio::sync::Mutex::new(cw));
                let down = {
                    let cw = cw.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if cw.lock().await.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    })
                };
                // Requests, one LDAPMessage at a time.
                while let Some(msg) = read_message(&mut cr).await {
                    let (id, op) = message_id_and_op(&msg);
                    if op == refuse.op && seen.fetch_add(1, Ordering::SeqCst) + 1 == refuse.nth {
                        if refuse.rc == 0 {
                            continue;
                        }
                        // Responses are the request's tag + 1, but for delete
                        // (0x4a, answered by 0x6b).
                        let tag = if refuse.op == 0x4a {
                            0x6b
                        } else {
                            refuse.op + 1
                        };
                        let reply = ldap_result(id, tag, refuse.rc, refuse.text);
                        if cw.lock().await.write_all(&reply).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    if sw.write_all(&msg).await.is_err() {
                        break;
                    }
                }
                down.abort();
            });
        }
    });
    port
}

/// One BER TLV (an LDAPMessage) from the stream, whole.
async fn read_message<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await.ok()?;
    let mut msg = head.to_vec();
    let len = if head[1] < 0x80 {
        usize::from(head[1])
    } else {
        let n = usize::from(head[1] & 0x7f);
        let mut bytes = vec![0u8; n];
        r.read_exact(&mut bytes).await.ok()?;
        msg.extend_from_slice(&bytes);
        bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b))
    };
    let start = msg.len();
    msg.resize(start + len, 0);
    r.read_exact(&mut msg[start..]).await.ok()?;
    Some(msg)
}

/// The message ID (as its encoded bytes) and the protocol op's tag.
fn message_id_and_op(msg: &[u8]) -> (Vec<u8>, u8) {
    let body = if msg[1] < 0x80 {
        2
    } else {
        2 + usize::from(msg[1] & 0x7f)
    };
    // messageID: INTEGER, short length.
    let id_len = usize::from(msg[body + 1]);
    let id = msg[body + 2..body + 2 + id_len].to_vec();
    (id, msg[body + 2 + id_len])
}

fn ber_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else {
        vec![0x82, (n >> 8) as u8, n as u8]
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(ber_len(content.len()));
    out.extend_from_slice(content);
    out
}

/// An LDAPResult response with the given tag, result code and text.
fn ldap_result(id: Vec<u8>, tag: u8, rc: u8, text: &str) -> Vec<u8> {
    let mut result = tlv(0x0a, &[rc]);
    result.extend(tlv(0x04, b""));
    result.extend(tlv(0x04, text.as_bytes()));
    let mut body = tlv(0x02, &id);
    body.extend(tlv(tag, &result));
    tlv(0x30, &body)
}

/// What [`mangle_on`] breaks in the server's answers (counted over every
/// connection, 1-based).
#[derive(Clone, Copy, Debug)]
pub enum Mangle {
    /// The `nth` SearchResultEntry: its attribute list becomes an OCTET
    /// STRING (ldap3's `SearchEntry::construct` panics on it).
    Entry(usize),
    /// The `nth` SearchResultDone: its resultCode becomes an OCTET STRING
    /// (ldap3's connection driver panics on it).
    Done(usize),
}

/// A proxy that mangles what it is set to (see [`mangle_on`]).
pub struct Mangler {
    pub port: u16,
    mode: std::sync::Arc<std::sync::Mutex<Option<Mangle>>>,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Mangler {
    /// From now on, mangle as `mode` says (counting afresh), or, with
    /// `None`, forward everything as it is.
    pub fn set(&self, mode: Option<Mangle>) {
        *self.mode.lock().unwrap() = mode;
        self.seen.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A TLS-terminating proxy on `ip` in front of the LDAPS server
/// `upstream` (as [`answer_on`]) that forwards every request and every
/// answer, but, once set to, rewrites the one answer a [`Mangle`] names
/// into a malformed message: a broken or malicious server.
pub async fn mangle_on(
    ip: &str,
    upstream: SocketAddr,
    upstream_name: &str,
    tls: (&std::path::Path, &std::path::Path, &std::path::Path),
) -> Mangler {
    use std::sync::atomic::Ordering;

    let (acceptor, connector) = tls_ends(tls.0, tls.1, tls.2);
    let name = rustls_pki_types::ServerName::try_from(upstream_name.to_string()).unwrap();
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let mangler = Mangler {
        port: listener.local_addr().unwrap().port(),
        mode: Default::default(),
        seen: Default::default(),
    };
    let (mode, seen) = (mangler.mode.clone(), mangler.seen.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, connector, name) = (acceptor.clone(), connector.clone(), name.clone());
            let (mode, seen) = (mode.clone(), seen.clone());
            tokio::spawn(async move {
                let Some((client, server)) =
                    bridge(&acceptor, &connector, name, client, upstream).await
                else {
                    return;
                };
                let (mut cr, mut cw) = tokio::io::split(client);
                let (mut sr, mut sw) = tokio::io::split(server);
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                // Answers, one LDAPMessage at a time.
                while let Some(mut msg) = read_message(&mut sr).await {
                    let (id, op) = message_id_and_op(&msg);
                    let target = match *mode.lock().unwrap() {
                        Some(Mangle::Entry(n)) => Some((0x64, n)),
                        Some(Mangle::Done(n)) => Some((0x65, n)),
                        None => None,
                    };
                    if let Some((tag, nth)) = target {
                        if op == tag && seen.fetch_add(1, Ordering::SeqCst) + 1 == nth {
                            msg = malformed(id, op);
                        }
                    }
                    if cw.write_all(&msg).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    mangler
}

/// A SearchResultEntry whose attribute list is an OCTET STRING, or a
/// SearchResultDone whose resultCode is one.
fn malformed(id: Vec<u8>, op: u8) -> Vec<u8> {
    let content = if op == 0x64 {
        let mut c = tlv(0x04, b"cn=mangled,ou=People");
        c.extend(tlv(0x04, b"not a SEQUENCE"));
        c
    } else {
        let mut c = tlv(0x04, b"0");
        c.extend(tlv(0x04, b""));
        c.extend(tlv(0x04, b""));
        c
    };
    let mut body = tlv(0x02, &id);
    body.extend(tlv(op, &content));
    tlv(0x30, &body)
}

/// One connection through the proxy: TLS with the client, then a TLS
/// connection to the server (`None` if either fails).
async fn bridge(
    acceptor: &tokio_rustls::TlsAcceptor,
    connector: &tokio_rustls::TlsConnector,
    name: rustls_pki_types::ServerName<'static>,
    client: TcpStream,
    upstream: SocketAddr,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    tokio_rustls::client::TlsStream<TcpStream>,
)> {
    let client = acceptor.accept(client).await.ok()?;
    let server = TcpStream::connect(upstream).await.ok()?;
    let server = connector.connect(name, server).await.ok()?;
    Some((client, server))
}

/// The proxy's two TLS ends: towards the client with `cert`/`key`, towards
/// the server trusting `ca`.
fn tls_ends(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_cfg)),
        tokio_rustls::TlsConnector::from(absync::ldap::tls_config(ca).unwrap()),
    )
}

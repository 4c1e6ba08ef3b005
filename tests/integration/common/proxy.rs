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

//! The accept loop the control socket and the metrics port share: it
//! survives accept errors (too many open files included: it pauses, then
//! accepts again) and serves at most [`MAX_CLIENTS`] clients at once, the
//! rest waiting in the kernel's backlog.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// Clients served at once; more wait in the kernel's backlog.
pub const MAX_CLIENTS: usize = 32;
/// How long a client has to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after an accept error (such as too many open files) before
/// accepting again.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

/// A listening socket: the control socket or the metrics port.
pub(crate) trait Listener: Send + 'static {
    type Stream: Send + 'static;
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn accept_one(&self) -> std::io::Result<UnixStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    async fn accept_one(&self) -> std::io::Result<TcpStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Accepts clients until the task is aborted, each served by `serve` in a
/// task of its own; `what` names the socket in the log.
pub(crate) async fn serve_clients<L, F, Fut>(listener: L, what: &'static str, serve: F)
where
    L: Listener,
    F: Fn(L::Stream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        // A slot first: beyond the cap, clients wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept_one().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "{what}: cannot accept a connection; retrying");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let served = serve(stream);
        tokio::spawn(async move {
            served.await;
            drop(slot);
        });
    }
}

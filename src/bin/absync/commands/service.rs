//! `absync run` (the daemon: signals in, `absync::service::serve` does the
//! work) and `absync resync` (asks the running daemon for a run).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use absync::engine::EXIT_COULD_NOT_RUN;
use absync::service::control::{self, Answer, Request};
use absync::service::{Systemd, Trigger};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::out::outln;

/// `absync run`: the daemon, with SIGTERM/SIGINT as shutdown and SIGHUP
/// as reload, telling systemd what it does.
pub async fn run(config_file: PathBuf) -> anyhow::Result<ExitCode> {
    let (tx, rx) = mpsc::channel(16);
    reload_on_hangup(tx.clone())?;
    let shutdown = terminated()?;
    absync::service::serve(config_file, shutdown, rx, tx, Arc::new(Systemd)).await?;
    Ok(ExitCode::SUCCESS)
}

/// Each SIGHUP becomes a reload request, until the daemon stops listening.
fn reload_on_hangup(reload: mpsc::Sender<Trigger>) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let why = "SIGHUP".to_string();
            if reload.send(Trigger::Reload { why }).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT.
fn terminated() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// `absync resync`: asks the daemon to run now.
pub async fn resync(socket: &Path, req: &Request) -> anyhow::Result<ExitCode> {
    match control::request(socket, req).await {
        Err(e) => {
            eprintln!("absync: {}", absync::text::Shown(&e.to_string()));
            Ok(ExitCode::from(EXIT_COULD_NOT_RUN))
        }
        Ok(Answer::Queued) => {
            outln!("resync requested; the daemon runs it now")?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(Answer::Done(report)) => {
            eprintln!("{}", report.summary);
            Ok(ExitCode::from(report.code))
        }
        Ok(Answer::Refused(why)) => {
            eprintln!("absync: the daemon refused: {}", absync::text::Shown(&why));
            Ok(ExitCode::from(EXIT_COULD_NOT_RUN))
        }
    }
}

/// `absync sync` while the daemon runs: it holds the state directory, so
/// the run is the daemon's to do. Refuses with the command that asks it
/// (the daemon answers on its control socket: members of the absync group
/// can reach it, root too).
pub fn refuse_if_daemon(
    socket: &Path,
    full: bool,
    allow_deletes: Option<u64>,
) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_err() {
        return Ok(());
    }
    let mut cmd = String::from("absync resync");
    if full {
        cmd.push_str(" --full");
    }
    if let Some(n) = allow_deletes {
        cmd.push_str(&format!(" --allow-deletes {n}"));
    }
    anyhow::bail!(
        "the absync daemon is running (it answers on {}) and does the runs: \
         ask it with `{cmd}`; it prints the run's summary and exits with its code",
        socket.display()
    )
}

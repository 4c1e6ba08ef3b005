//! An optional Prometheus endpoint (`[metrics] listen`): plain text,
//! computed from the state database and the daemon's status on each scrape.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::service::protocol::DaemonError;
use crate::service::status::DaemonStatus;
use crate::state::{ReadFrom, Snapshot};

/// Serves the metrics; returns the task and the address it listens on
/// (port 0 in the configuration picks a free one).
pub async fn serve(
    addr: SocketAddr,
    state_dir: PathBuf,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), DaemonError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Metrics { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| DaemonError::Metrics { addr, source })?;
    tracing::info!(addr = %bound, "metrics listening");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let dir = state_dir.clone();
            tokio::spawn(async move {
                // Read the whole request head before answering: closing a
                // socket with unread bytes makes the kernel reset it, and
                // the client then loses the response (a broken pipe).
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(5), read_head(&mut stream))
                        .await;
                let body = tokio::task::spawn_blocking(move || render(&dir))
                    .await
                    .unwrap_or_default();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((task, bound))
}

/// Reads until the blank line that ends an HTTP request head (or 8 KiB, or
/// the end of the stream). The path is not looked at: every request gets
/// the metrics.
async fn read_head(stream: &mut tokio::net::TcpStream) {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while head.len() < 8192 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
    }
}

fn epoch(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// The metrics text (Prometheus exposition format 0.0.4).
pub fn render(state_dir: &std::path::Path) -> String {
    let mut out = String::new();
    // Read-only: a scrape never changes the state.
    let Ok(s) = Snapshot::open_read_only(state_dir, ReadFrom::Live) else {
        return "# state database unavailable\n".into();
    };
    let runs = s.runs(u32::MAX).unwrap_or_default();
    let mut by_status: std::collections::BTreeMap<String, u64> = Default::default();
    let mut ops: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in &runs {
        let key = r.status.split(':').next().unwrap_or("").to_string();
        *by_status.entry(key).or_default() += 1;
        if let Some(c) = &r.counts {
            for (op, n) in [
                ("add", c.added),
                ("modify", c.modified),
                ("rename", c.renamed),
                ("delete", c.deleted),
                ("hide", c.hidden),
                ("restore", c.restored),
                ("conflict", c.conflicts),
                ("failed", c.failed),
                ("withheld", c.withheld),
            ] {
                *ops.entry(op).or_default() += n;
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP absync_runs_total Runs by final status.\n# TYPE absync_runs_total counter"
    );
    for (status, n) in &by_status {
        let _ = writeln!(
            out,
            "absync_runs_total{{status=\"{}\"}} {n}",
            status.replace('"', "'")
        );
    }
    let _ = writeln!(out, "# HELP absync_objects_total Objects written by operation, over all runs.\n# TYPE absync_objects_total counter");
    for (op, n) in &ops {
        let _ = writeln!(out, "absync_objects_total{{operation=\"{op}\"}} {n}");
    }
    let last_ok = runs.iter().find(|r| r.status == "ok");
    let _ = writeln!(out, "# HELP absync_last_success_timestamp_seconds End of the last successful run.\n# TYPE absync_last_success_timestamp_seconds gauge");
    let _ = writeln!(
        out,
        "absync_last_success_timestamp_seconds {}",
        last_ok
            .and_then(|r| r.ended_at.as_deref())
            .and_then(epoch)
            .unwrap_or(0)
    );
    if let Some(last) = runs.first() {
        let secs = last.seconds().unwrap_or(0.0);
        let _ = writeln!(out, "# HELP absync_last_run_duration_seconds Duration of the last run.\n# TYPE absync_last_run_duration_seconds gauge\nabsync_last_run_duration_seconds {secs}");
        let stopped = u8::from(crate::engine::removals::holds_deletes(&last.status));
        let _ = writeln!(out, "# HELP absync_deletes_held 1 when the last run held deletes back for an admin.\n# TYPE absync_deletes_held gauge\nabsync_deletes_held {stopped}");
        let failed = u8::from(last.status.starts_with("failed"));
        let _ = writeln!(out, "# HELP absync_last_run_failed 1 when the last run could not run.\n# TYPE absync_last_run_failed gauge\nabsync_last_run_failed {failed}");
    }
    let _ = writeln!(out, "# HELP absync_managed_objects Objects absync manages in the target.\n# TYPE absync_managed_objects gauge");
    let _ = writeln!(
        out,
        "absync_managed_objects{{hidden=\"false\"}} {}",
        s.count_visible().unwrap_or(0)
    );
    let hidden = s
        .count()
        .unwrap_or(0)
        .saturating_sub(s.count_visible().unwrap_or(0));
    let _ = writeln!(out, "absync_managed_objects{{hidden=\"true\"}} {hidden}");
    let _ = writeln!(out, "# HELP absync_state_bytes Size of the state database (snapshot and journal) on disk.\n# TYPE absync_state_bytes gauge\nabsync_state_bytes {}", crate::state::bytes_on_disk(state_dir));
    compliance(&mut out, &s);
    if let Some(d) = DaemonStatus::read(state_dir) {
        let _ = writeln!(out, "# HELP absync_consecutive_failures Failed runs in a row.\n# TYPE absync_consecutive_failures gauge\nabsync_consecutive_failures {}", d.consecutive_failures);
        let _ = writeln!(out, "# HELP absync_running 1 while a run is in flight.\n# TYPE absync_running gauge\nabsync_running {}", u8::from(d.state == "running"));
        let _ = writeln!(out, "# HELP absync_config_error 1 while a new configuration was refused.\n# TYPE absync_config_error gauge\nabsync_config_error {}", u8::from(d.config_error.is_some()));
    }
    out
}

/// What the last full run's compliance check found: violations, objects
/// absync does not own, when, and whether it could read the target.
fn compliance(out: &mut String, s: &Snapshot) {
    let Ok(Some(last)) = crate::engine::compliance::last_check(s) else {
        return;
    };
    let _ = writeln!(out, "# HELP absync_compliance_checked_timestamp_seconds When the last full run checked what the OUs hold against the agreements.\n# TYPE absync_compliance_checked_timestamp_seconds gauge\nabsync_compliance_checked_timestamp_seconds {}", epoch(&last.at).unwrap_or(0));
    let _ = writeln!(out, "# HELP absync_compliance_check_failed 1 when the last check could not read the target.\n# TYPE absync_compliance_check_failed gauge\nabsync_compliance_check_failed {}", u8::from(last.tally.is_none()));
    if let Some(t) = &last.tally {
        let _ = writeln!(out, "# HELP absync_compliance_violations absync's objects the last check found not covered by an agreement in force or past their grace period.\n# TYPE absync_compliance_violations gauge\nabsync_compliance_violations {}", t.violation_count());
        let _ = writeln!(out, "# HELP absync_compliance_unowned_objects Objects in the OUs absync does not own, at the last check; nhs=\"true\": those with NHS-looking values.\n# TYPE absync_compliance_unowned_objects gauge");
        let _ = writeln!(
            out,
            "absync_compliance_unowned_objects{{nhs=\"true\"}} {}\nabsync_compliance_unowned_objects{{nhs=\"false\"}} {}",
            t.not_owned_nhs,
            t.not_owned.saturating_sub(t.not_owned_nhs)
        );
    }
}

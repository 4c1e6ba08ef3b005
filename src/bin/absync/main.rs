//! The `absync` command. Parses arguments, sets up logging, runs one
//! command, and maps its outcome to the documented exit codes:
//! 0 = done, no failed entries; 1 = done, some entries failed (journaled);
//! 2 = could not run (configuration, connection, TLS, bind, state);
//! 3 = stopped by a safety rail: deletes held back (threshold, unhealthy source).

use std::path::PathBuf;
use std::process::ExitCode;

use absync::config::Config;
use absync::engine::render::Format;
use absync::engine::{self, Mode, Options, Outcome};
use absync::ldap::Conn;
use absync::state::audit;
use absync::state::journal::Stored;
use anyhow::Context;
use clap::Parser;

mod cli;
mod print;

use cli::{Cli, Command, ExportFormat, JournalCommand, Only, Output};
use print::Printer;

/// Logs go to journald, with structured fields (run id, anchor,
/// operation), when systemd connected stderr to the journal; otherwise to
/// stderr, for people.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let wanted = std::env::var("ABSYNC_LOG").unwrap_or_else(|_| "info".into());
    // The file watcher's own events stay quiet unless asked for by name: at
    // trace level it logs every event in the watched directories, and a log
    // written into one of them would feed itself.
    let directives = if wanted.contains("notify") {
        wanted
    } else {
        format!("{wanted},notify=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=warn"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    journald
                        .with_syslog_identifier("absync".into())
                        // Field names as written: RUN_ID, ANCHOR, OP.
                        .with_field_prefix(None),
                )
                .init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("absync: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("absync: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = path.context("no configuration: give --config FILE or set ABSYNC_CONFIG")?;
    let cfg = Config::load(&path)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    Ok(cfg)
}

/// The part of the configuration the daemon's clients need (no passwords).
fn load_view(path: Option<PathBuf>) -> anyhow::Result<absync::config::ServiceView> {
    let path = path.context("no configuration: give --config FILE or set ABSYNC_CONFIG")?;
    Ok(absync::config::ServiceView::load(&path)?)
}

/// absync writes to Active Directory and keeps personal data: as root, a
/// mistake reaches everything. `sync` and `run` refuse root unless told
/// (`ABSYNC_ALLOW_ROOT=1`), as a test bed run by root has to.
fn refuse_root() -> anyhow::Result<()> {
    let root = absync::os::current_uid() == Some(0);
    if root && std::env::var("ABSYNC_ALLOW_ROOT").as_deref() != Ok("1") {
        anyhow::bail!(
            "refusing to run as root: run absync as its service user (the package's \
             absync.service does), or set ABSYNC_ALLOW_ROOT=1 to insist"
        );
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if matches!(
        cli.command,
        Command::Run | Command::Sync { dry_run: false, .. }
    ) {
        refuse_root()?;
    }
    if let Command::Journal {
        state: Some(dir),
        command,
    } = cli.command
    {
        return journal(&dir, command);
    }
    match &cli.command {
        Command::Init { path } => return init(path),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "absync", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Status {
            runs,
            state: Some(dir),
        } => return status(dir, None, *runs),
        Command::Run => {
            let path = cli
                .config
                .context("no configuration: give --config FILE or set ABSYNC_CONFIG")?;
            return daemon(path).await;
        }
        // The daemon's clients need neither the passwords nor the other
        // input files: an admin in the absync group can use them.
        Command::Resync { full, no_wait } => {
            let view = load_view(cli.config)?;
            return resync(&view.service.socket, *full, !*no_wait).await;
        }
        Command::Status { runs, state: None } => {
            let view = load_view(cli.config)?;
            return status(&view.state_dir, Some(&view.target_base_dn), *runs);
        }
        _ => {}
    }
    let cfg = load_config(cli.config)?;
    match cli.command {
        Command::Run
        | Command::Init { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Resync { .. }
        | Command::Status { .. } => Ok(ExitCode::SUCCESS),
        Command::Check => check(&cfg).await,
        Command::Journal { command, .. } => journal(&cfg.state_dir, command),
        Command::Sync {
            dry_run: false,
            full,
            allow_deletes,
            ..
        } => {
            let opts = Options {
                full,
                allow_deletes,
                ..Default::default()
            };
            let outcome = engine::run(&cfg, Mode::Apply, opts, &mut std::io::sink()).await?;
            print_summary(&outcome, "sync");
            Ok(exit_for(&outcome))
        }
        Command::Sync {
            dry_run: true,
            format,
            full,
            allow_deletes,
        } => {
            plan(
                &cfg,
                format,
                Options {
                    full,
                    allow_deletes,
                    ..Default::default()
                },
            )
            .await
        }
        Command::Plan { format, full, only } => {
            let opts = Options {
                full,
                only_deletes: only == Some(Only::Deletes),
                ..Default::default()
            };
            plan(&cfg, format, opts).await
        }
    }
}

async fn plan(cfg: &Config, format: Format, opts: Options) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    let outcome = engine::run(cfg, Mode::Plan(format), opts, &mut stdout).await?;
    if format == Format::Table {
        print_summary(&outcome, "plan");
    }
    Ok(ExitCode::SUCCESS)
}

fn exit_for(o: &Outcome) -> ExitCode {
    ExitCode::from(o.exit_code())
}

/// `absync run`: the daemon, with SIGTERM/SIGINT as shutdown and SIGHUP
/// as reload, telling systemd what it does.
async fn daemon(path: PathBuf) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut hup = signal(SignalKind::hangup())?;
    let reload = tx.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let why = "SIGHUP".to_string();
            if reload
                .send(absync::service::Trigger::Reload { why })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    absync::service::serve(
        path,
        shutdown,
        rx,
        tx,
        std::sync::Arc::new(absync::service::Systemd),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `absync resync`: asks the daemon to run now.
async fn resync(socket: &std::path::Path, full: bool, wait: bool) -> anyhow::Result<ExitCode> {
    let req = absync::service::control::Request { full, wait };
    match absync::service::control::request(socket, &req).await {
        Err(e) => {
            eprintln!("absync: {e}");
            Ok(ExitCode::from(2))
        }
        Ok(absync::service::control::Answer::Queued) => {
            println!("resync requested; the daemon runs it now");
            Ok(ExitCode::SUCCESS)
        }
        Ok(absync::service::control::Answer::Done(report)) => {
            eprintln!("{}", report.summary);
            Ok(ExitCode::from(report.code))
        }
        Ok(absync::service::control::Answer::Refused(why)) => {
            eprintln!("absync: the daemon refused: {why}");
            Ok(ExitCode::from(2))
        }
    }
}

const STARTER: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/absync.toml"));

/// `absync init`: a commented starter configuration.
fn init(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    if path == std::path::Path::new("-") {
        print!("{STARTER}");
    } else {
        if path.exists() {
            anyhow::bail!("{} exists; not overwritten", path.display());
        }
        std::fs::write(path, STARTER).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}; edit it, then run `absync check`", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn status(state_dir: &std::path::Path, ou: Option<&str>, limit: u32) -> anyhow::Result<ExitCode> {
    let db = state_dir.join("absync.db");
    if !db.exists() {
        println!("state {}: no runs yet", state_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let snapshot = absync::state::Snapshot::open(state_dir)?;
    let total = snapshot.count()?;
    let visible = snapshot.count_visible()?;
    let size = absync::state::bytes_on_disk(state_dir);
    println!(
        "state      {} ({:.1} MB)\nmanaged    {visible} objects{}, {} hidden awaiting deletion",
        state_dir.display(),
        size as f64 / 1e6,
        ou.map(|o| format!(" in {o}")).unwrap_or_default(),
        total - visible
    );
    match absync::service::DaemonStatus::read(state_dir) {
        Some(d) => {
            let state = if d.state == "running" {
                format!(
                    "running since {} ({} entries pulled so far)",
                    d.since, d.progress
                )
            } else {
                format!("idle since {}", d.since)
            };
            println!("daemon     pid {}, {state}", d.pid);
            println!(
                "next run   {}{}",
                d.next_run.as_deref().unwrap_or("-"),
                if d.next_run_full { " (full)" } else { "" }
            );
            if d.consecutive_failures > 0 {
                println!(
                    "failures   {} runs in a row could not run",
                    d.consecutive_failures
                );
            }
            if let Some(m) = &d.metrics {
                println!("metrics    http://{m}/metrics");
            }
            if let Some(e) = &d.config_error {
                println!("config     REFUSED, still running the previous one: {e}");
            }
        }
        None => println!("daemon     not running; next run not scheduled"),
    }
    if let Some(last) = snapshot.runs(1)?.first() {
        if last.status.starts_with("stopped") || last.status.starts_with("deletes held") {
            println!(
                "attention  run {} {}: deletes are waiting for an admin \
                 (absync plan --only deletes; absync sync --allow-deletes N)",
                last.id, last.status
            );
        }
    }
    println!();
    println!(
        "{:>5}  {:<20}  {:>7}  {:<5}  {:<28}  counts",
        "run", "started", "secs", "mode", "status"
    );
    for r in snapshot.runs(limit)? {
        let secs = r
            .seconds()
            .map(|s| format!("{s:.1}"))
            .unwrap_or_else(|| "-".into());
        let c = r.counts.unwrap_or_default();
        println!(
            "{:>5}  {:<20}  {:>7}  {:<5}  {:<28}  +{} ~{} >{} -{} hidden {} held {} failed {}",
            r.id,
            print::short_time(&r.started_at),
            secs,
            r.mode,
            r.status.chars().take(60).collect::<String>(),
            c.added,
            c.modified,
            c.renamed,
            c.deleted,
            c.hidden,
            c.withheld,
            c.failed
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn open_state(dir: &std::path::Path) -> anyhow::Result<absync::state::Snapshot> {
    if !dir.join("absync.db").exists() {
        anyhow::bail!("no journal in {}", dir.display());
    }
    Ok(absync::state::Snapshot::open(dir)?)
}

fn when(text: &str, end_of_day: bool) -> anyhow::Result<String> {
    audit::parse_when(text, end_of_day).map_err(|e| anyhow::anyhow!(e))
}

/// Writing results failed (a closed pipe, a full disk): stops the query.
fn output_error(e: std::io::Error) -> absync::state::StateError {
    absync::state::StateError::Output(e.to_string())
}

/// Streams records through a printer.
fn print_each(
    format: Output,
    query: impl FnOnce(audit::Each<'_, Stored>) -> Result<(), absync::state::StateError>,
) -> anyhow::Result<u64> {
    let mut p = Printer::stdout(format, audit::CSV_HEADER)?;
    query(&mut |s| p.record(&s).map_err(output_error))?;
    Ok(p.finish()?)
}

fn journal(state_dir: &std::path::Path, command: JournalCommand) -> anyhow::Result<ExitCode> {
    let s = open_state(state_dir)?;
    match command {
        JournalCommand::Verify => {
            let verdict = audit::verify(&s)?;
            println!("{verdict}");
            return Ok(match verdict {
                audit::Verdict::Intact { .. } => ExitCode::SUCCESS,
                audit::Verdict::Broken { .. } => ExitCode::from(1),
            });
        }
        JournalCommand::Runs { since, format } => {
            let since = since.map(|d| when(&d, false)).transpose()?;
            let runs = audit::runs(&s, since.as_deref())?;
            match format {
                Output::Json => println!("{}", serde_json::to_string_pretty(&runs)?),
                Output::Csv => {
                    println!("run,started,ended,seconds,mode,status,added,modified,renamed,deleted,hidden,restored,withheld,conflicts,failed,user,config_hash,mapping_hash,agreements_hash");
                    for r in &runs {
                        let c = r.counts.clone().unwrap_or_default();
                        let secs = r.seconds().unwrap_or(0.0);
                        println!(
                            "{},{},{},{secs:.1},{},\"{}\",{},{},{},{},{},{},{},{},{},{},{},{},{}",
                            r.id,
                            r.started_at,
                            r.ended_at.clone().unwrap_or_default(),
                            r.mode,
                            r.status.replace('"', "\"\""),
                            c.added,
                            c.modified,
                            c.renamed,
                            c.deleted,
                            c.hidden,
                            c.restored,
                            c.withheld,
                            c.conflicts,
                            c.failed,
                            r.unix_user,
                            r.files.config,
                            r.files.mapping,
                            r.files.agreements
                        );
                    }
                }
                Output::Table => {
                    for r in &runs {
                        let c = r.counts.clone().unwrap_or_default();
                        let secs = r
                            .seconds()
                            .map(|v| format!("{v:.1}s"))
                            .unwrap_or_else(|| "-".into());
                        println!(
                            "run {:<5} {}  {:>7}  {:<5} {:<30} +{} ~{} >{} -{} hidden {} restored {} held {} conflicts {} failed {}  by {}",
                            r.id,
                            print::short_time(&r.started_at),
                            secs,
                            r.mode,
                            r.status,
                            c.added, c.modified, c.renamed, c.deleted, c.hidden, c.restored,
                            c.withheld, c.conflicts, c.failed, r.unix_user
                        );
                    }
                }
            }
        }
        JournalCommand::Show { run, format } => {
            if print_each(format, |f| audit::show(&s, run, f))? == 0 {
                anyhow::bail!("no run {run} in the journal");
            }
        }
        JournalCommand::History { who, format } => {
            let records = audit::history(&s, &who)?;
            if records.is_empty() {
                anyhow::bail!("no journal record mentions {who}");
            }
            print_each(format, |f| records.into_iter().try_for_each(f))?;
        }
        JournalCommand::Held { at, org, format } => {
            let at = when(&at, true)?;
            let org = org.map(|o| o.to_uppercase());
            let mut p = Printer::stdout(format, print::HELD_CSV_HEADER)?;
            audit::held(&s, &at, org.as_deref(), &mut |h| {
                p.held(&h).map_err(output_error)
            })?;
            let n = p.finish()?;
            if format == Output::Table {
                let scope = org.map(|o| format!(" for {o}")).unwrap_or_default();
                println!("{n} objects held at {at}{scope}");
            }
        }
        JournalCommand::Agreement { id, format } => {
            print_each(format, |f| audit::agreement(&s, &id, f))?;
        }
        JournalCommand::ConfigChanges { format } => {
            let changes = audit::config_changes(&s)?;
            match format {
                Output::Table => {
                    for (run, what) in &changes {
                        println!(
                            "{}  run {:<5} changed: {:<28} config {} mapping {} agreements {}",
                            print::short_time(&run.started_at),
                            run.id,
                            what.join(", "),
                            &run.files.config.chars().take(12).collect::<String>(),
                            &run.files.mapping.chars().take(12).collect::<String>(),
                            &run.files.agreements.chars().take(12).collect::<String>(),
                        );
                    }
                }
                Output::Json => {
                    let v: Vec<_> = changes
                        .iter()
                        .map(|(r, w)| serde_json::json!({"run": r.id, "at": r.started_at, "changed": w, "files": r.files}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Output::Csv => {
                    println!("run,at,changed,config_hash,mapping_hash,agreements_hash");
                    for (r, w) in &changes {
                        println!(
                            "{},{},\"{}\",{},{},{}",
                            r.id,
                            r.started_at,
                            w.join(" "),
                            r.files.config,
                            r.files.mapping,
                            r.files.agreements
                        );
                    }
                }
            }
        }
        JournalCommand::Export {
            since,
            format,
            redact,
        } => {
            let since = when(&since, false)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            use std::io::Write;
            if format == ExportFormat::Csv {
                // A byte-order mark, so spreadsheets read the file as UTF-8.
                write!(out, "\u{feff}{}\r\n", audit::CSV_HEADER)?;
            }
            let redactor = if redact {
                Some(audit::Redactor::new()?)
            } else {
                None
            };
            audit::since(&s, &since, &mut |r| {
                let r = match &redactor {
                    Some(x) => x.redact(r),
                    None => r,
                };
                match format {
                    ExportFormat::Csv => write!(out, "{}\r\n", audit::csv_line(&r)),
                    ExportFormat::Jsonl => serde_json::to_string(&r)
                        .map_err(std::io::Error::from)
                        .and_then(|line| writeln!(out, "{line}")),
                }
                .map_err(output_error)
            })?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(o: &Outcome, what: &str) {
    eprintln!("{}", o.summary(what));
}

async fn check(cfg: &Config) -> anyhow::Result<ExitCode> {
    let inputs = engine::load_inputs(cfg)?;
    println!("config      {}: ok", cfg.file.display());
    println!(
        "mapping     {}: ok ({} attributes)",
        cfg.mapping_file.display(),
        inputs.mapping.rules.len()
    );
    let in_force: Vec<&str> = inputs
        .agreements
        .in_force()
        .map(|a| a.id.as_str())
        .collect();
    println!(
        "agreements  {}: ok ({} in force today: {}; {} organisations)",
        cfg.agreements_file.display(),
        in_force.len(),
        in_force.join(", "),
        inputs.agreements.grants().len()
    );
    let source = Conn::connect(&cfg.source.endpoint).await?;
    println!(
        "source      {}: bound as {}",
        cfg.source.endpoint.url, cfg.source.endpoint.bind_dn
    );
    source.unbind().await;
    let mut target = Conn::connect(&cfg.target.endpoint).await?;
    println!(
        "target      {}: bound as {}",
        cfg.target.endpoint.url, cfg.target.endpoint.bind_dn
    );
    let class = inputs
        .mapping
        .object_class
        .last()
        .cloned()
        .unwrap_or_default();
    let mut containers = vec![("target OU", cfg.target.base_dn.clone())];
    containers.extend(cfg.safety.quarantine_ou.clone().map(|q| ("quarantine", q)));
    for (what, dn) in containers {
        // AD computes which classes the bound account may create under an
        // entry: no test write needed.
        let ou = target
            .read(&dn, &["allowedChildClassesEffective"])
            .await?
            .with_context(|| format!("{what} {dn} does not exist"))?;
        let allowed = ou
            .attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("allowedChildClassesEffective"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if !allowed.iter().any(|c| c.eq_ignore_ascii_case(&class)) {
            anyhow::bail!(
                "{what} {dn}: {} may not create {class} objects there",
                cfg.target.endpoint.bind_dn
            );
        }
        println!("{what:<11} {dn}: exists; {class} objects may be created");
    }
    target.unbind().await;
    Ok(ExitCode::SUCCESS)
}

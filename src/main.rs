//! The `absync` command. Parses arguments, sets up logging, runs one
//! command, and maps its outcome to the documented exit codes:
//! 0 = done, no failed entries; 1 = done, some entries failed (journaled);
//! 2 = could not run (configuration, connection, TLS, bind, state).

use std::path::PathBuf;
use std::process::ExitCode;

use absync::config::Config;
use absync::ldap::Conn;
use absync::render::Format;
use absync::sync::{self, Mode, Outcome};
use anyhow::Context;
use clap::{Parser, Subcommand};

/// absync: copies the NHS Directory entries that data-sharing agreements
/// allow into Active Directory, and journals every change.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, env = "ABSYNC_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check configuration, mapping and agreements; bind to both servers;
    /// check the target OU exists and the account may create objects there.
    Check,
    /// Run one synchronisation.
    Sync {
        /// Compute and print the plan, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format of the plan with --dry-run.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Print what a sync would do, without writing anything.
    Plan {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ABSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = load_config(cli.config)?;
    match cli.command {
        Command::Check => check(&cfg).await,
        Command::Sync { dry_run: false, .. } => {
            let outcome = sync::run(&cfg, Mode::Apply, &mut std::io::sink()).await?;
            print_summary(&outcome, "sync");
            Ok(exit_for(&outcome))
        }
        Command::Sync {
            dry_run: true,
            format,
        }
        | Command::Plan { format } => {
            let mut stdout = std::io::stdout().lock();
            let outcome = sync::run(&cfg, Mode::Plan(format), &mut stdout).await?;
            if format == Format::Table {
                print_summary(&outcome, "plan");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit_for(o: &Outcome) -> ExitCode {
    if o.counts.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_summary(o: &Outcome, what: &str) {
    let c = &o.counts;
    let run = o.run_id.map(|id| format!(" run {id}")).unwrap_or_default();
    let verb = if what == "plan" { "would be " } else { "" };
    eprintln!(
        "absync {what}{run}: {:.1} s\n  pulled {}, in scope {}, out of scope {}, leavers {}, rejected {}, attributes dropped {}\n  {verb}added {}, modified {}, renamed {}, deleted {}; conflicts {}, failed {}{}",
        o.duration.as_secs_f64(),
        c.pulled,
        c.in_scope,
        c.out_of_scope,
        c.leavers,
        c.rejected,
        c.dropped_attributes,
        c.added,
        c.modified,
        c.renamed,
        c.deleted,
        c.conflicts,
        c.failed,
        if c.recovered > 0 {
            format!("; recovered after an interrupted run {}", c.recovered)
        } else {
            String::new()
        }
    );
}

async fn check(cfg: &Config) -> anyhow::Result<ExitCode> {
    let inputs = sync::load_inputs(cfg)?;
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
    // AD computes which classes the bound account may create under an
    // entry: no test write needed.
    let ou = target
        .read(&cfg.target.base_dn, &["allowedChildClassesEffective"])
        .await?
        .with_context(|| format!("target OU {} does not exist", cfg.target.base_dn))?;
    let allowed: Vec<String> = ou
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("allowedChildClassesEffective"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let class = inputs
        .mapping
        .object_class
        .last()
        .cloned()
        .unwrap_or_default();
    if !allowed.iter().any(|c| c.eq_ignore_ascii_case(&class)) {
        anyhow::bail!(
            "target OU {}: {} may not create {class} objects there",
            cfg.target.base_dn,
            cfg.target.endpoint.bind_dn
        );
    }
    println!(
        "target OU   {}: exists; {class} objects may be created",
        cfg.target.base_dn
    );
    target.unbind().await;
    Ok(ExitCode::SUCCESS)
}

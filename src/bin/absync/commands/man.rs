//! `absync man`: the manual pages, absync(1) and one page per subcommand
//! (absync-sync(1), absync-journal-verify(1), ...) generated from the
//! command line clap reads, so a flag and its page cannot disagree; and
//! absync.toml(5), written by hand (clap knows nothing of the
//! configuration file), from `man/absync.toml.5`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::out::{self, outln};

/// absync.toml(5), as shipped.
pub const CONFIG_PAGE: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/man/absync.toml.5"));

/// `absync man`: absync(1) on stdout; with `--dir DIR`, every page written
/// into DIR (absync.1, absync-*.1, absync.toml.5), one line per file.
pub fn run(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let pages = pages()?;
    match dir {
        None => {
            let (_, page) = pages.first().context("no manual page")?;
            out::stdout().write_all(page)?;
        }
        Some(dir) => {
            for (name, page) in &pages {
                let path = dir.join(name);
                std::fs::write(&path, page)
                    .with_context(|| format!("writing {}", path.display()))?;
                outln!("{}", path.display())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every page, file name and roff text; absync.1 first.
pub fn pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    command_pages(&cmd, None, &mut pages)?;
    pages.push(("absync.toml.5".to_string(), CONFIG_PAGE.as_bytes().to_vec()));
    Ok(pages)
}

/// The page of `cmd` (named by its display name: `absync-journal-verify`),
/// then those of its subcommands.
fn command_pages(
    cmd: &clap::Command,
    parent: Option<&str>,
    pages: &mut Vec<(String, Vec<u8>)>,
) -> std::io::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let man = clap_mangen::Man::new(cmd.clone())
        .manual("absync manual")
        .source(format!("absync {version}"));
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut page)?;
    }
    page.extend_from_slice(exit_status(&name).as_bytes());
    page.extend_from_slice(ENVIRONMENT.as_bytes());
    page.extend_from_slice(FILES.as_bytes());
    page.extend_from_slice(see_also(parent).as_bytes());
    // Subcommands carry no version of their own (clap_mangen would panic).
    page.extend_from_slice(format!(".SH VERSION\nv{version}\n").as_bytes());
    pages.push((format!("{name}.1"), page));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command_pages(sub, Some(&name), pages)?;
    }
    Ok(())
}

/// The EXIT STATUS section: what each exit code of this command means.
fn exit_status(name: &str) -> String {
    let codes: &[(&str, &str)] = match name {
        "absync" | "absync-sync" | "absync-resync" => &[
            ("0", "Done, no entry failed."),
            ("1", "Done, but some entries were refused by the target; each is journaled with the server's error text and retried by the next run."),
            ("2", "Could not run or could not finish: usage, configuration, connection, TLS, bind, state database, a source read that ended early, or a target that stopped answering (what it accepted is kept and journaled); resync also when no daemon listens on the socket. The message names the cause and where it is."),
            ("3", "Done, but a safety rail held deletes back (deletion threshold or unhealthy source): nothing was deleted; release them with \\fB\\-\\-allow\\-deletes\\fR \\fIN\\fR."),
        ],
        "absync-plan" => &[
            ("0", "The plan was printed (with \\fB\\-\\-detailed\\-exitcode\\fR: there is nothing to do)."),
            ("2", "The plan could not run (message on stderr); with \\fB\\-\\-detailed\\-exitcode\\fR also: a run would change something."),
            ("3", "With \\fB\\-\\-detailed\\-exitcode\\fR: a real run would stop on a safety rail."),
        ],
        "absync-run" => &[
            ("0", "Stopped by SIGTERM or SIGINT, after the entry in flight."),
            ("2", "Could not start: configuration, mapping or agreements refused, the state directory in use by another absync or its database unreadable, the control socket or metrics address unavailable. The unit does not restart it (\\fBRestartPreventExitStatus=2\\fR): fix the cause, then \\fBsystemctl restart absync\\fR. A run that fails (a server down, TLS, bind, a refused entry) never ends the daemon: it is retried after 30 s, 1 min, 2 min, ... up to the interval."),
        ],
        "absync-audit" => &[
            ("0", "Nothing in the managed or quarantine OU violates the agreements in force."),
            ("1", "Something does: a contact of absync's that no agreement covers, with an attribute no agreement allows, or hidden past its grace period."),
            ("2", "Could not run."),
        ],
        "absync-status" => &[
            ("0", "Done (with \\fB\\-\\-check\\fR: OK)."),
            ("1", "With \\fB\\-\\-check\\fR: WARNING."),
            ("2", "Could not read the state (with \\fB\\-\\-check\\fR: CRITICAL)."),
            ("3", "With \\fB\\-\\-check\\fR: UNKNOWN, the state cannot be read."),
        ],
        "absync-journal" | "absync-journal-verify" => &[
            ("0", "Done; for verify: the journal is intact."),
            ("1", "verify: the journal is broken or not proven (the first bad record is named)."),
            ("2", "Could not run."),
        ],
        _ => &[("0", "Done."), ("2", "Could not run; the message names the cause.")],
    };
    let mut s = String::from(".SH \"EXIT STATUS\"\n");
    for (code, what) in codes {
        s.push_str(&format!(".TP\n\\fB{code}\\fR\n{what}\n"));
    }
    s.push_str(".PP\nUsage errors (an unknown flag) exit 2. A reader that closes the pipe early ends any command quietly with exit 0, except sync, which keeps its run's code.\n");
    s
}

const ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
\fBABSYNC_CONFIG\fR
The configuration file, when \fB\-\-config\fR is not given. Default: \fI/etc/absync/absync.toml\fR when it exists.
.TP
\fBABSYNC_LOG\fR
The log filter (\fBwarn\fR, \fBinfo\fR, \fBdebug\fR, or a tracing filter); wins over \fB\-q\fR and \fB\-v\fR. The log goes to stderr, or to the systemd journal under the service.
.TP
\fBNO_COLOR\fR
When set to anything but the empty string, the log has no colours.
.TP
\fBCREDENTIALS_DIRECTORY\fR
Where \fBpassword_credential\fR and \fBsigning_key_credential\fR files are read from; systemd sets it for the service (\fBLoadCredential=\fR, \fBLoadCredentialEncrypted=\fR).
.TP
\fBRUNTIME_DIRECTORY\fR
The default directory of the control socket (\fIabsync.sock\fR) when \fB[daemon] socket\fR is not set.
.TP
\fBABSYNC_ALLOW_ROOT\fR
\fB1\fR lets sync, plan and run work as root; they refuse otherwise.
"#;

const FILES: &str = r#".SH FILES
.TP
\fI/etc/absync/absync.toml\fR
The configuration; see \fBabsync.toml\fR(5).
.TP
\fI/etc/absync/agreements.toml\fR
The data-sharing agreements in force.
.TP
\fI/etc/absync/mappings/\fR
The mappings from source entries to contacts.
.TP
\fI/etc/absync/certs/\fR
The CA certificates of the source and target servers.
.TP
\fI/etc/absync/source.pw\fR, \fI/etc/absync/target.pw\fR
The bind passwords, mode 0600, root's; the unit hands them to the service as credentials.
.TP
\fI/var/lib/absync/absync.db\fR
The state: the snapshot of what absync wrote, and the hash-chained journal auditors rely on. Purging the package keeps it.
.TP
\fI/run/absync/absync.sock\fR
The running daemon's control socket (resync, status), mode 0660, group absync.
.TP
\fI/usr/share/doc/absync/README.md\fR
The guide for admins and auditors.
"#;

/// SEE ALSO: the main page, the configuration, the parent command's page.
fn see_also(parent: Option<&str>) -> String {
    let mut refs = vec!["\\fBabsync.toml\\fR(5)".to_string()];
    if parent.is_some() {
        refs.insert(0, "\\fBabsync\\fR(1)".to_string());
    }
    if let Some(parent) = parent.filter(|p| *p != "absync") {
        refs.push(format!("\\fB{}\\fR(1)", parent.replace('-', "\\-")));
    }
    refs.push("\\fBsystemctl\\fR(1)".to_string());
    format!(".SH \"SEE ALSO\"\n{}\n", refs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(name: &str) -> String {
        let pages = pages().unwrap();
        let (_, p) = pages.iter().find(|(n, _)| n == name).unwrap();
        String::from_utf8(p.clone()).unwrap()
    }

    #[test]
    fn every_subcommand_has_a_page_with_exit_status_environment_and_files() {
        let pages = pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "absync.1",
            "absync-sync.1",
            "absync-plan.1",
            "absync-run.1",
            "absync-check.1",
            "absync-journal.1",
            "absync-journal-verify.1",
            "absync.toml.5",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        for (name, text) in &pages {
            let text = String::from_utf8_lossy(text);
            for section in [".SH NAME", "EXIT STATUS\"", ".SH ENVIRONMENT", ".SH FILES"] {
                assert!(text.contains(section), "{name} has no {section}");
            }
        }
        // What the main page points to exists.
        let main = page("absync.1");
        assert!(main.contains("absync\\-sync(1)"), "{main}");
        assert!(page("absync-run.1").contains("RestartPreventExitStatus=2"));
        assert!(page("absync-journal-verify.1").contains("\\fBabsync\\-journal\\fR(1)"));
    }

    /// Every key the configuration accepts (the fields of `config.rs`'s
    /// `Raw*` structs) is described in absync.toml(5).
    #[test]
    fn the_configuration_page_names_every_key() {
        let src = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/config.rs"));
        let mut missing = Vec::new();
        let mut in_raw = false;
        for line in src.lines() {
            if line.starts_with("pub struct Raw") {
                in_raw = true;
            } else if line.starts_with('}') {
                in_raw = false;
            } else if let Some(field) = in_raw
                .then(|| line.trim().strip_prefix("pub "))
                .flatten()
                .and_then(|l| l.split_once(':'))
                .map(|(f, _)| f.trim())
            {
                if !CONFIG_PAGE.contains(&format!("\\fB{field}\\fR"))
                    && !CONFIG_PAGE.contains(&format!("[{field}]"))
                {
                    missing.push(field.to_string());
                }
            }
        }
        assert!(
            missing.is_empty(),
            "absync.toml.5 does not describe {missing:?}"
        );
        for section in [".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", ".SH FILES"] {
            assert!(
                CONFIG_PAGE.contains(section),
                "absync.toml.5 has no {section}"
            );
        }
    }
}

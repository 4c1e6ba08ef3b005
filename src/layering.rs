//! The dependency rules of ARCHITECTURE.md, checked on the source itself:
//! which room may name which (`crate::…` paths in code outside tests), no
//! import cycle between files, the pure rooms free of I/O and the clock,
//! the auditor's queries free of writes, printing and `anyhow` only in the
//! binary, and no function longer than a screen or two.
#![cfg(test)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's files: module path (`engine::apply`) → code outside its
/// tests, comments removed.
fn modules() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into()).collect();
        if parts[0] == "bin" || parts == ["lib"] {
            continue;
        }
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        let text = std::fs::read_to_string(&file).unwrap();
        out.insert(parts.join("::"), code_outside_tests(&text));
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The code before a file's test module, without comment lines (a file
/// that is all tests is empty).
fn code_outside_tests(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut code = String::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("#![cfg(test)]") {
            return String::new();
        }
        let next = lines.get(i + 1).copied().unwrap_or("");
        if line.starts_with("#[cfg(test)]") && next.starts_with("mod ") {
            break;
        }
        if !line.trim_start().starts_with("//") {
            code.push_str(line);
            code.push('\n');
        }
    }
    code
}

/// The modules a file names through `crate::` paths (the longest module
/// prefix of each path).
fn uses(code: &str, known: &BTreeSet<&str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        for n in (1..=segments.len()).rev() {
            let candidate = segments[..n].join("::");
            if known.contains(candidate.as_str()) {
                out.insert(candidate);
                break;
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let known: BTreeSet<&str> = modules.keys().map(String::as_str).collect();
    modules
        .iter()
        .map(|(m, code)| {
            let mut deps = uses(code, &known);
            deps.remove(m);
            (m.clone(), deps)
        })
        .collect()
}

fn in_room(module: &str, room: &str) -> bool {
    module == room || module.starts_with(&format!("{room}::"))
}

/// Every edge from a module of `room` to a module of one of `forbidden`.
fn crossings(room: &str, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (module, deps) in graph() {
        if !in_room(&module, room) {
            continue;
        }
        for dep in deps {
            if forbidden.iter().any(|f| in_room(&dep, f)) {
                found.push(format!("{module} uses {dep}"));
            }
        }
    }
    found
}

#[test]
fn the_modules_form_no_import_cycle() {
    let graph = graph();
    // Kahn's algorithm: what cannot be ordered lies on a cycle.
    let mut left = graph.clone();
    loop {
        let free: Vec<String> = left
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
            .map(|(m, _)| m.clone())
            .collect();
        if free.is_empty() {
            break;
        }
        for m in free {
            left.remove(&m);
        }
    }
    assert!(left.is_empty(), "modules on an import cycle: {left:#?}");
    assert!(graph.contains_key("engine::removals::decide"), "{graph:#?}");
}

#[test]
fn state_knows_nothing_of_ldap_the_engine_or_the_service() {
    let found = crossings("state", &["ldap", "engine", "service", "config", "report"]);
    assert!(found.is_empty(), "{found:#?}");
    for (module, code) in modules() {
        if in_room(&module, "state") {
            assert!(!code.contains("ldap3"), "{module} uses ldap3");
        }
    }
}

#[test]
fn the_foundations_know_nothing_of_the_rooms_above_them() {
    for room in [
        "config",
        "agreements",
        "dn",
        "secret",
        "failpoint",
        "os",
        "text",
        "period",
        "maildomains",
        "ldap",
    ] {
        let found = crossings(room, &["engine", "state", "service"]);
        assert!(found.is_empty(), "{found:#?}");
    }
}

#[test]
fn the_report_renders_only_what_the_state_gathered() {
    let found = crossings("report", &["ldap", "engine", "service", "config"]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_engine_knows_nothing_of_the_service() {
    let found = crossings("engine", &["service"]);
    assert!(found.is_empty(), "{found:#?}");
}

/// Signs of I/O or of the clock.
const IMPURE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::env",
    "std::process",
    "tokio",
    "rusqlite",
    "Snapshot",
    "crate::ldap",
    "Conn",
    "now_utc",
    "Instant::now",
    "SystemTime",
    "journal::now",
    "today()",
    "stdout",
    "stderr",
];

#[test]
fn scope_map_diff_render_the_delete_decision_and_the_report_do_no_io_and_read_no_clock() {
    let modules = modules();
    for module in [
        "maildomains",
        "engine::scope",
        "engine::map",
        "engine::screen",
        "engine::phone",
        "engine::diff",
        "engine::render",
        "engine::removals::decide",
        "engine::compliance::classify",
        "engine::preflight",
        "report",
        "report::chart",
        "report::html",
        "report::sections",
        "period",
    ] {
        let code = &modules[module];
        for sign in IMPURE {
            assert!(!code.contains(sign), "{module} names {sign}");
        }
    }
}

#[test]
fn the_auditors_queries_and_verify_only_read() {
    let modules = modules();
    for (module, write) in ["state::audit", "state::verify", "state::report"]
        .iter()
        .flat_map(|m| WRITES.iter().map(move |w| (*m, *w)))
    {
        assert!(!modules[module].contains(write), "{module} has {write}");
    }
}

/// Signs of a write to the database.
const WRITES: &[&str] = &[
    "INSERT",
    "UPDATE ",
    "DELETE FROM",
    "REPLACE",
    ".execute",
    "transaction",
    "append",
    "retention",
];

#[test]
fn only_the_binary_prints_or_uses_anyhow() {
    for (module, code) in modules() {
        for sign in [
            "print!", "println!", "dbg!", "anyhow", "stdout()", "stderr()",
        ] {
            // A failpoint says on stderr why it aborts the process, for
            // the crash tests to check.
            let allowed = module == "failpoint" && sign == "println!";
            assert!(allowed || !code.contains(sign), "{module} has {sign}");
        }
    }
}

#[test]
fn no_function_outside_tests_is_longer_than_120_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut long = Vec::new();
    for file in rust_files(&src) {
        let module = file.strip_prefix(&src).unwrap().display().to_string();
        let code = code_outside_tests(&std::fs::read_to_string(&file).unwrap());
        let lines: Vec<&str> = code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "pub(crate) fn ",
                "async fn ",
                "pub async fn ",
            ]
            .iter()
            .chain(&[
                "pub(crate) async fn ",
                "pub(super) fn ",
                "pub(super) async fn ",
            ])
            .any(|p| trimmed.starts_with(p));
            if !is_fn || line.trim_end().ends_with(';') {
                continue;
            }
            let indent = &line[..line.len() - trimmed.len()];
            let end = lines[i + 1..]
                .iter()
                .position(|l| *l == format!("{indent}}}"))
                .unwrap_or(0);
            if end + 2 > 120 {
                long.push(format!("{module}: {} ({} lines)", trimmed, end + 2));
            }
        }
    }
    assert!(long.is_empty(), "{long:#?}");
}

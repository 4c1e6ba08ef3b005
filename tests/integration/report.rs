//! `journal report` after a realistic sequence of runs (a load with a
//! conflict, source changes, an agreement ending that stops at the
//! threshold until an admin allows the deletes), looked at the way a
//! person would: rendered by headless Chromium, its sections in the page
//! the browser built, no request made by the page, a screenshot kept as a
//! test artifact (`target/test-artifacts/report.png`, with the page).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use absync::ldap::Conn;

use crate::common::check::{day, ALL_ATTRS};
use crate::common::env::{SyncEnv, NO_RAILS};

/// A surname and an agreement title no page may take for markup.
const HOSTILE_SN: &str = "O'Brien <script>alert(\"sn\")</script> & Co";
const HOSTILE_TITLE: &str = "Trust & <script>alert(\"t\")</script> contacts";

const HEADINGS: [&str; 9] = [
    "Verification",
    "Changes per day",
    "Changes per agreement",
    "Deletes by reason",
    "Safety rails and overrides",
    "Configuration and agreement changes",
    "Open conflicts",
    "Holdings per agreement",
    "Compliance",
];

fn agreements(env: &SyncEnv, codes: &[String], b_until: &str) {
    let entry = |id: &str, title: &str, orgs: &[String], until: &str| {
        format!(
            "[[agreement]]\nid = \"{id}\"\ntitle = {}\norganisations = {orgs:?}\n\
             attributes = {ALL_ATTRS:?}\nvalid_from = {}\nvalid_until = {until}\n\n",
            toml_string(title),
            day(-30)
        )
    };
    let text = entry("DSA-REP-A", HOSTILE_TITLE, &codes[..2], &day(30))
        + &entry("DSA-REP-B", "Phones for the county", &codes[2..], b_until);
    std::fs::write(env.dir.join("agreements.toml"), text).unwrap();
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The sequence; returns the environment, the public key, and the anchor
/// of the person in conflict.
async fn history(name: &str) -> (SyncEnv, PathBuf, String) {
    let env = SyncEnv::new(name, 81, 80, 3, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    agreements(&env, &codes, &day(30));
    let (private, public) = env.keygen();
    let signing = format!("\n[journal]\nsigning_key = \"{}\"\n", private.display());
    env.set_safety(&format!("{NO_RAILS}{signing}"));

    // Run 1: the load. A person with a hostile surname meets an object
    // absync does not own that holds their name: a conflict.
    let people = env.source_people("(nhsEntryStatus=active)").await;
    let (victim, person) = people
        .iter()
        .find(|(_, p)| p["nhsodscode"][0] == codes[1] && p.contains_key("givenname"))
        .unwrap();
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: sn\nsn: {HOSTILE_SN}\n-\n\n",
        person["dn"][0]
    ));
    let cn = format!("{} {HOSTILE_SN}", person["givenname"][0]);
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    admin
        .add(
            &format!("CN={},{}", absync::dn::escape_value(&cn), env.target_ou),
            vec![
                ("objectClass".into(), ["contact".into()].into()),
                ("description".into(), ["made by hand".into()].into()),
            ],
        )
        .await
        .unwrap();
    env.sync_ok();

    // Run 2: a title changes and someone is renamed.
    let (_, changed) = people
        .iter()
        .find(|(u, p)| p["nhsodscode"][0] == codes[0] && *u != victim)
        .unwrap();
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: sn\nsn: Renamed\n-\nreplace: title\n\
         title: Report Lead\n-\n\n",
        changed["dn"][0]
    ));
    env.sync_ok();

    // Run 3: agreement B ends; its people are more deletes than the
    // threshold allows, so the run stops (exit 3) until an admin allows
    // them (run 4).
    env.set_safety(&format!(
        "[safety]\nmax_deletes = 4\nmax_delete_percent = 10\ndelete_grace = \"0\"\n{signing}"
    ));
    agreements(&env, &codes, &day(-1));
    let stopped = env.absync(&["sync"]);
    assert_eq!(stopped.code, 3, "{stopped:?}");
    let allowed = env.absync(&["sync", "--allow-deletes", "1000"]);
    assert_eq!(allowed.code, 0, "{allowed:?}");
    // A full run checks compliance and journals it (run 5).
    let full = env.absync(&["sync", "--full"]);
    assert_eq!(full.code, 0, "{full:?}");
    (env, public, victim.clone())
}

/// Where a test keeps what a person should be able to look at afterwards.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs Debian's `chromium` headless (as root: without its sandbox), with
/// a profile of its own, for at most two minutes.
fn chromium(profile: &Path, args: &[String]) -> Output {
    if let Err(e) = Command::new("chromium").arg("--version").output() {
        panic!(
            "cannot run chromium ({e}): the report test renders the page in it; \
             tests/testbed/install.sh installs Debian's chromium and fonts-dejavu-core"
        );
    }
    let out = Command::new("timeout")
        .args([
            "120",
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args([
            "--no-first-run",
            "--disable-background-networking",
            "--disable-sync",
        ])
        .args(["--disable-component-update", "--disable-default-apps"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The URLs requested on behalf of a page opened from a file (its
/// network isolation key or site for cookies is `file://`), as the
/// browser's own log of its network stack records them. The browser's own
/// traffic (update checks and the like) belongs to no page.
fn page_requests(net_log: &Path) -> Vec<String> {
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(net_log).unwrap()).unwrap();
    let start = &log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"];
    assert!(
        start.is_number(),
        "no URL_REQUEST_START_JOB in the net log's constants"
    );
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == *start)
        .map(|e| &e["params"])
        .filter(|p| {
            let nik = p["network_isolation_key"].as_str().unwrap_or("");
            let site = p["site_for_cookies"].as_str().unwrap_or("");
            nik.starts_with("file://") || site.contains("site=file://")
        })
        .filter_map(|p| p["url"].as_str().map(str::to_string))
        .collect()
}

/// Opens `page` in Chromium: its screenshot, and what the page asked the
/// network for.
fn look_at(page: &Path, screenshot: &Path, work: &Path) -> Vec<String> {
    let net_log = work.join(format!(
        "net-{}.json",
        page.file_stem().unwrap().to_string_lossy()
    ));
    chromium(
        &work.join("profile-shot"),
        &[
            format!("--log-net-log={}", net_log.display()),
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,4200".to_string(),
            format!("file://{}", page.display()),
        ],
    );
    page_requests(&net_log)
}

/// The page as the browser built it (its DOM, serialised).
fn dom_of(page: &Path, work: &Path) -> String {
    let out = chromium(
        &work.join("profile-dom"),
        &[
            "--dump-dom".to_string(),
            format!("file://{}", page.display()),
        ],
    );
    String::from_utf8(out.stdout).unwrap()
}

fn png_size(path: &Path) -> (u32, u32) {
    let png = std::fs::read(path).unwrap();
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is a PNG",
        path.display()
    );
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[tokio::test]
async fn the_report_renders_in_chromium_with_its_sections_and_makes_no_request() {
    let (env, public, victim) = history("report").await;
    let work = env.dir.join("look");
    std::fs::create_dir_all(&work).unwrap();
    let page = env.dir.join("report.html");
    let (from, to) = (day(-13), day(1));
    let args = ["journal", "report", "--from", &from, "--to", &to, "-o"];
    let mut all = args.to_vec();
    let page_arg = page.to_str().unwrap();
    all.extend([page_arg, "--public-key", public.to_str().unwrap()]);
    let t = std::time::Instant::now();
    let made = env.absync(&all);
    let took = t.elapsed();
    assert_eq!(made.code, 0, "{made:?}");
    assert!(
        made.stdout.starts_with(&format!("wrote {page_arg}: ")),
        "{made:?}"
    );
    assert!(made.stdout.contains("intact"), "{made:?}");
    eprintln!("journal report took {took:?}");

    let html = std::fs::read_to_string(&page).unwrap();
    check_html(&env, &html, &victim);

    // A control: a page that does fetch something is caught, so the check
    // below can fail.
    let bad = work.join("fetches.html");
    std::fs::write(
        &bad,
        "<!DOCTYPE html><p>x<img src=\"http://127.0.0.1:9/x.png\">",
    )
    .unwrap();
    let fetched = look_at(&bad, &work.join("fetches.png"), &work);
    assert_eq!(
        fetched,
        ["http://127.0.0.1:9/x.png"],
        "the net log shows a page's request"
    );

    let shot = artifacts().join("report.png");
    let _ = std::fs::remove_file(&shot);
    let requested = look_at(&page, &shot, &work);
    assert!(requested.is_empty(), "the report asked for {requested:?}");
    assert_eq!(png_size(&shot), (1280, 4200));
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 100_000,
        "a page, not a blank"
    );
    std::fs::copy(&page, artifacts().join("report.html")).unwrap();

    let dom = dom_of(&page, &work);
    check_dom(&dom);
}

/// The file itself: no URL but the policy's, every section, the figures
/// the journal's own queries give.
fn check_html(env: &SyncEnv, html: &str, victim: &str) {
    let csp = "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
               style-src 'unsafe-inline'; img-src data:\">";
    assert_eq!(html.matches(csp).count(), 1, "the policy is in the page");
    let rest = html.replace(csp, "");
    for sign in ["http:", "https:", "//", "<script", "src="] {
        assert!(!rest.contains(sign), "{sign} in the page");
    }
    for h in HEADINGS {
        assert!(html.contains(&format!("<h2>{h}</h2>")), "{h}");
    }
    assert!(html.contains("<span class=\"badge ok\">intact</span> intact, "));
    assert!(
        html.contains("signed by key "),
        "checked with the public key"
    );
    assert!(html.contains("Signed last at or before"));
    // The threshold stop and the override, with who gave it.
    assert!(html.contains("<td>threshold</td>"), "the rail");
    let who = absync::os::Who::me().to_string();
    assert!(html.contains("<code>--allow-deletes 1000</code>"));
    assert!(html.contains(&format!(
        "<td>{}</td>",
        absync::report::html::escape_html(&who)
    )));
    // Agreement B's end, as a change of its terms and as deletes.
    assert!(html.contains(&format!("valid_until {} → {}", day(30), day(-1))));
    assert!(
        html.contains(&format!("<td>agreement DSA-REP-B ended {}</td>", day(-1))),
        "deletes by reason"
    );
    // The conflict is open, the hostile name escaped.
    assert!(html.contains(&format!("<td class=\"code\"><code>{victim}</code></td>")));
    // (absync writes the DN's specials as hex pairs: `\3cscript\3e`.)
    assert!(html.contains(" O&#39;Brien \\3cscript\\3ealert(\\22sn\\22)"));
    assert!(html.contains("&amp; Co,OU=report-"));
    assert!(html.contains("Trust &amp; &lt;script&gt;alert(&quot;t&quot;)&lt;/script&gt; contacts"));
    // The full run's compliance check.
    assert!(
        html.contains("<span class=\"badge ok\">ok</span> the latest check in the period"),
        "the compliance check"
    );
    // Holdings agree with `journal held --agreement`.
    let held = env.absync(&[
        "journal",
        "held",
        "--at",
        &day(1),
        "--agreement",
        "DSA-REP-A",
    ]);
    let n = held
        .stdout
        .lines()
        .last()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(n.parse::<u64>().unwrap() > 10, "{held:?}");
    let row = format!(
        "<td>{} to {}</td><td class=\"num\">{n}</td>",
        day(-30),
        day(30)
    );
    assert!(html.contains(&row), "DSA-REP-A holds {n}: {row}");
    let ended = format!(
        "<td>{} to {} (ended)</td><td class=\"num\">0</td>",
        day(-30),
        day(-1)
    );
    assert!(html.contains(&ended), "DSA-REP-B holds nobody: {ended}");
}

/// The page as Chromium built it: every heading, in order; two charts; no
/// script element; the hostile values as text.
fn check_dom(dom: &str) {
    let mut at = 0;
    for h in HEADINGS {
        let tag = format!("<h2>{h}</h2>");
        at += dom[at..]
            .find(&tag)
            .unwrap_or_else(|| panic!("{tag} not in the DOM"));
    }
    assert_eq!(dom.matches("<svg class=\"chart\"").count(), 2, "two charts");
    assert!(dom.matches("<rect").count() > 10, "bars drawn");
    assert!(!dom.contains("<script"), "no script element");
    assert!(dom.contains("&lt;script&gt;alert(\"t\")&lt;/script&gt;"));
}

#[tokio::test]
async fn the_report_never_overwrites_a_file_unless_forced_and_checks_its_days() {
    let env = SyncEnv::new("report-args", 82, 10, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-REP-C", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    let page = env.dir.join("kept.html");
    std::fs::write(&page, "an earlier report").unwrap();
    let page_arg = page.to_str().unwrap();
    let r = env.absync(&["journal", "report", "--from", &day(-1), "-o", page_arg]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("{page_arg} exists: give --force")),
        "{r:?}"
    );
    assert_eq!(std::fs::read_to_string(&page).unwrap(), "an earlier report");
    let r = env.absync(&[
        "journal",
        "report",
        "--from",
        &day(-1),
        "-o",
        page_arg,
        "--force",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(std::fs::read_to_string(&page)
        .unwrap()
        .starts_with("<!DOCTYPE html>"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&page).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the page names people");
    let other = env.dir.join("other.html");
    let other_arg = other.to_str().unwrap();
    let r = env.absync(&[
        "journal",
        "report",
        "--from",
        &day(1),
        "--to",
        &day(-1),
        "-o",
        other_arg,
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("is after --to"), "{r:?}");
    let r = env.absync(&["journal", "report", "--from", "last week", "-o", other_arg]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("\"last week\" is not a date"), "{r:?}");
    assert!(!other.exists(), "nothing written on an error");
}

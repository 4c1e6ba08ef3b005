//! Escaping per output: source values built to inject records into a
//! plan's LDIF, to take over a terminal, or to hide in an address-book
//! name, each shown harmless where it lands.

use crate::common::check::*;
use crate::common::env::SyncEnv;

/// One source person as change LDIF, every value through absync's own
/// LDIF writer (base64 where needed). `dn_value`: the uid in the DN.
fn person(base: &str, uid: &str, sn: &str, ods: &str, employee: Option<&str>) -> String {
    let mut s = String::new();
    let line = |s: &mut String, k: &str, v: &str| absync::engine::render::ldif_line(s, k, v);
    line(&mut s, "dn", &format!("uid={uid},ou=People,{base}"));
    s.push_str("changetype: add\nobjectClass: inetOrgPerson\nobjectClass: nhsPerson\n");
    line(&mut s, "uid", uid);
    line(&mut s, "givenName", "Hostile");
    line(&mut s, "sn", sn);
    line(&mut s, "cn", &format!("Hostile {sn}"));
    line(&mut s, "nhsOdsCode", ods);
    line(&mut s, "nhsEntryStatus", "active");
    if let Some(e) = employee {
        line(&mut s, "employeeNumber", e);
    }
    s.push('\n');
    s
}

/// The domain's DN: the target OU's `DC=` part.
fn domain(target_ou: &str) -> String {
    let at = target_ou
        .to_uppercase()
        .find("DC=")
        .expect("a DC in the OU");
    target_ou[at..].to_string()
}

/// What `ldapmodify -n` (parse only, nothing sent) makes of `ldif`: one
/// `(operation, DN)` per record.
fn parsed_by_ldapmodify(env: &SyncEnv, ldif: &str) -> Vec<(String, String)> {
    let file = env.dir.join("plan.ldif");
    std::fs::write(&file, ldif).unwrap();
    let out = std::process::Command::new("ldapmodify")
        .args(["-n", "-v", "-f"])
        .arg(&file)
        .output()
        .expect("run ldapmodify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ldapmodify -n refused the plan: {}\n{stdout}\n{ldif}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| {
            let (op, dn) = l.split_once(" \"").expect("an operation and a DN");
            (op.to_string(), dn.trim_end_matches('"').to_string())
        })
        .collect()
}

#[tokio::test]
async fn an_anchor_holding_a_newline_and_a_record_cannot_inject_it_into_a_plans_ldif() {
    let env = SyncEnv::new("escape-ldif", 171, 3, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-E", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    // The source's anchor is employeeNumber, which the source's users can
    // influence.
    env.set_config_line("anchor_attribute", "\"employeeNumber\"");
    let admin = format!("CN=Administrator,CN=Users,{}", domain(&env.target_ou));
    // A record for the domain administrator; the comment's rest (the
    // reason) goes into a comment of its own.
    let injected = format!(
        "E-1\r\n\ndn: {admin}\nchangetype: modify\nreplace: description\n\
         description: pwned\n-\n\n#"
    );
    let mut ldif = person(
        &env.source_base,
        "inject1",
        "Anchor",
        &codes[0],
        Some(&injected),
    );
    // A name that carries a record too (it ends in AD on one line).
    let in_name = format!("Name\ndn: {admin}\nchangetype: delete\n");
    ldif.push_str(&person(
        &env.source_base,
        "inject2",
        &in_name,
        &codes[0],
        Some("E-2"),
    ));
    env.change_source(&ldif);

    let plan = env.absync(&["plan", "--format", "ldif"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let records = parsed_by_ldapmodify(&env, &plan.stdout);
    // The three generated people and the one with a name are added; the
    // one with the crafted anchor is added too, or refused (a comment):
    // nothing else.
    let ou = env.target_ou.to_lowercase();
    assert!(
        records.len() == 4 || records.len() == 5,
        "{records:#?}\n{}",
        plan.stdout
    );
    for (op, dn) in &records {
        assert_eq!(op, "adding new entry", "{records:#?}");
        assert!(
            dn.to_lowercase().ends_with(&format!(",{ou}")),
            "{dn} is outside the OU: {records:#?}\n{}",
            plan.stdout
        );
        assert!(
            !dn.to_lowercase().starts_with("cn=administrator,"),
            "{records:#?}"
        );
    }
    // The crafted anchor is refused as it is read (it holds a control
    // character), or, if it got as far as a comment, shown escaped there:
    // either way every comment is one line.
    assert!(
        plan.stdout.contains("# E-1\\r\\n\\ndn: CN=Administrator")
            || plan
                .stdout
                .lines()
                .any(|l| l.starts_with("# rejected, not applied: uid=inject1,")
                    && l.ends_with("employeeNumber (the anchor) holds a control character")),
        "{}",
        plan.stdout
    );
    assert!(
        !plan
            .stdout
            .lines()
            .any(|l| l.starts_with("dn: CN=Administrator")),
        "{}",
        plan.stdout
    );
    // RFC 2849: the version first.
    assert!(plan.stdout.starts_with("version: 1\n\n"), "{}", plan.stdout);
    assert!(env.ad_objects().await.is_empty(), "a plan writes nothing");
}

#[tokio::test]
async fn escape_sequences_and_bidi_controls_in_source_values_reach_no_terminal() {
    let env = SyncEnv::new("escape-term", 172, 2, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-E", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.set_config_line("anchor_attribute", "\"employeeNumber\"");
    // Refused (no anchor): its DN, with an escape sequence that clears the
    // screen and a right-to-left override, is what plan and the journal
    // show. Held: its name, with the same, is what AD gets.
    let hostile = "x\u{1b}[2J\u{1b}[8m\u{202E}nimda\u{200B}";
    let mut ldif = person(&env.source_base, hostile, "Refused", &codes[0], None);
    ldif.push_str(&person(
        &env.source_base,
        "held1",
        &format!("Smith{hostile}"),
        &codes[0],
        Some("E-H1"),
    ));
    env.change_source(&ldif);
    let shown = "x\\u{1b}[2J\\u{1b}[8m\\u{202e}nimda\\u{200b}";
    let raw = |text: &str| {
        text.chars()
            .filter(|&c| c != '\n' && absync::text::unsafe_on_terminal(c))
            .collect::<String>()
    };

    let plan = env.absync(&["plan"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert_eq!(raw(&plan.stdout), "", "{plan:?}");
    assert_eq!(raw(&plan.stderr), "", "{plan:?}");
    assert!(
        plan.stdout.contains(&format!("reject   uid={shown}")),
        "{plan:?}"
    );

    let run = env.absync(&["sync"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run_id = env.snapshot().runs(1).unwrap()[0].id.to_string();
    let show = env.absync(&["journal", "show", &run_id]);
    assert_eq!(show.code, 0, "{show:?}");
    assert_eq!(raw(&show.stdout), "", "{show:?}");
    assert!(show.stdout.contains(&format!("uid={shown}")), "{show:?}");
    for args in [&["journal", "runs"][..], &["status"][..]] {
        let r = env.absync(args);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(raw(&r.stdout), "", "{r:?}");
    }
    // JSON keeps its own escaping: the value whole, as JSON escapes it.
    let json = env.absync(&["journal", "show", &run_id, "--format", "json"]);
    assert!(json.stdout.contains("\\u001b[2J"), "{json:?}");

    // AD's name has neither the controls nor the bidi and zero-width
    // characters.
    let ad = by_anchor(&env.ad_objects().await);
    let held = &ad["E-H1"];
    for attr in ["cn", "sn", "displayname"] {
        let v = &held[attr][0];
        assert!(
            !v.contains(|c: char| c.is_control() || absync::text::unsafe_on_terminal(c)),
            "{attr}: {v:?}"
        );
        assert!(v.contains("Smithx[2J[8mnimda"), "{attr}: {v:?}");
    }
}

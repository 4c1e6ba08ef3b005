//! What an admin sees when something is wrong: exit code 2 and a message
//! naming the cause and where it is; nothing written anywhere.

use crate::common::check::day;
use crate::common::env::SyncEnv;

async fn env(name: &str) -> SyncEnv {
    let env = SyncEnv::new(name, 31, 20, 2, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-C", &orgs, &["sn", "cn"], &day(-1), &day(1))]);
    env
}

fn edit_config(env: &SyncEnv, from: &str, to: &str) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(text.contains(from), "config has no {from:?}");
    std::fs::write(env.config_path(), text.replacen(from, to, 1)).unwrap();
}

#[tokio::test]
async fn config_errors_name_file_line_and_key_and_exit_2() {
    let env = env("cli-config").await;
    let cfg = env.config_path().display().to_string();

    edit_config(&env, "page_size = 200", "page_size = 200\npage_sise = 10");
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!("{cfg}:11")) && r.stderr.contains("page_sise"),
        "{r:?}"
    );

    edit_config(&env, "page_sise = 10", "");
    edit_config(&env, "filter = \"(&", "filter = \"((&");
    let r = env.absync(&["check"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("source.filter") && r.stderr.contains("not a valid LDAP filter"),
        "{r:?}"
    );
    edit_config(&env, "filter = \"((&", "filter = \"(&");

    let url = env.tb.get("SOURCE_URL").to_string();
    edit_config(&env, &url, &url.replace("ldaps://", "ldap://"));
    let r = env.absync(&["check"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("source.url") && r.stderr.contains("plain-text"),
        "{r:?}"
    );
    assert!(
        !env.state_dir().exists(),
        "nothing written on a config error"
    );
}

#[tokio::test]
async fn bad_agreements_and_mapping_files_are_reported_with_their_line() {
    let env = env("cli-files").await;
    let agreements = env.dir.join("agreements.toml");
    std::fs::write(
        &agreements,
        format!(
            "[[agreement]]\nid = \"X\"\ntitle = \"x\"\norganisations = [\"RX1)(uid=*\"]\nattributes = [\"sn\"]\nvalid_from = {}\nvalid_until = {}\n",
            day(-1),
            day(1)
        ),
    )
    .unwrap();
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!("{}:4", agreements.display()))
            && r.stderr.contains("not an ODS code"),
        "{r:?}"
    );
}

#[tokio::test]
async fn unreachable_server_wrong_password_and_wrong_ca_exit_2_with_clear_messages() {
    let env = env("cli-conn").await;
    let url = env.tb.get("TARGET_URL").to_string();
    edit_config(&env, &url, "ldaps://127.0.0.1:1");
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("ldaps://127.0.0.1:1") && r.stderr.contains("connection refused"),
        "{r:?}"
    );
    edit_config(&env, "ldaps://127.0.0.1:1", &url);

    let pw = env.dir.join("wrong.pw");
    std::fs::write(&pw, "Not-The-Password-42").unwrap();
    let real = env.tb.get("TARGET_SVC_PASSWORD_FILE").to_string();
    edit_config(&env, &real, &pw.display().to_string());
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("invalid credentials"), "{r:?}");
    assert!(!r.stderr.contains("Not-The-Password-42"));
    // The password file is readable by others: a warning, not an error.
    assert!(r.stderr.contains("expected 0600"), "{r:?}");
    edit_config(&env, &pw.display().to_string(), &real);

    let target_ca = env.tb.get("TARGET_CA").to_string();
    let good = std::fs::read_to_string(env.config_path()).unwrap();
    edit_config(
        &env,
        &format!("ca_file = \"{target_ca}\""),
        &format!("ca_file = \"{}\"", env.tb.get("SOURCE_CA")),
    );
    let r = env.absync(&["check"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("TLS handshake failed") && r.stderr.contains("not signed by a CA in"),
        "{r:?}"
    );
    assert!(env.ad_objects().await.is_empty(), "nothing reached AD");

    // The configuration put right: the next run syncs everyone.
    std::fs::write(env.config_path(), good).unwrap();
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    let expected = crate::common::check::expected_anchors(
        &env.source_people("(objectClass=nhsPerson)").await,
        &env.org_codes(),
    );
    let held = crate::common::check::by_anchor(&env.ad_objects().await);
    assert!(!expected.is_empty());
    assert_eq!(
        held.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
}

#[tokio::test]
async fn dry_run_and_plan_write_nothing_anywhere() {
    let env = env("cli-plan").await;
    for args in [&["plan"][..], &["sync", "--dry-run", "--format", "json"]] {
        let r = env.absync(args);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout.contains("add") || r.stdout.contains("\"op\":\"add\""),
            "{r:?}"
        );
    }
    assert!(env.ad_objects().await.is_empty());
    let snap = env.snapshot();
    assert!(snap.runs(10).unwrap().is_empty(), "plan recorded a run");
    assert_eq!(snap.count().unwrap(), 0);
}

#[tokio::test]
async fn check_passes_on_the_test_bed_and_fails_where_the_account_may_not_write() {
    let env = env("cli-check").await;
    let ok = env.absync(&["check"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(
        ok.stdout.contains("exists; contact objects may be created"),
        "{ok:?}"
    );
    // The domain's Users container exists, but the service account may
    // create nothing there.
    let domain = &env.target_ou[env.target_ou.find("DC=").unwrap()..];
    let users = format!("CN=Users,{domain}");
    edit_config(&env, &env.target_ou, &users);
    let r = env.absync(&["check"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&users) && r.stderr.contains("may not create contact objects there"),
        "{r:?}"
    );
    assert!(env.ad_objects().await.is_empty(), "check wrote nothing");
    edit_config(&env, &users, &env.target_ou);

    // A grace period with no way to hide is refused by check, as by sync.
    env.set_safety("[safety]\ndelete_grace = \"7d\"\n");
    for cmd in ["check", "sync"] {
        let r = env.absync(&[cmd]);
        assert_eq!(r.code, 2, "{cmd}: {r:?}");
        assert!(
            r.stderr.contains("safety.delete_grace")
                && r.stderr
                    .contains("a grace period needs a way to hide objects"),
            "{cmd}: {r:?}"
        );
    }
}

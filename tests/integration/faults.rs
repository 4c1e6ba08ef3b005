//! Servers misbehaving: each ends in a clean failure with a clear message
//! and exit code, no damage, and recovery on the next run.

use std::time::{Duration, Instant};

use absync::ldap::Conn;

use crate::common::check::*;
use crate::common::env::SyncEnv;

async fn synced(name: &str) -> (SyncEnv, Vec<String>) {
    let env = SyncEnv::new(name, 81, 30, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-F", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    (env, codes)
}

fn replace_in_config(env: &SyncEnv, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(text.contains(from), "{from} not in the config");
    std::fs::write(env.config_path(), text.replacen(from, to, 1)).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_name_is_refused_by_name() {
    let (env, _) = synced("fault-name").await;
    let before = env.ad_objects().await;
    // The same slapd, reached at 127.0.0.2: its certificate names
    // 127.0.0.1 and localhost only.
    let url = env.tb.get("SOURCE_URL").to_string();
    let upstream = url.trim_start_matches("ldaps://").parse().unwrap();
    let port = crate::common::proxy::forward_on("127.0.0.2", upstream, usize::MAX).await;
    let text = replace_in_config(&env, &url, &format!("ldaps://127.0.0.2:{port}"));
    let env_ref = &env;
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("TLS handshake failed")
            && r.stderr.contains("does not name the host in the URL"),
        "{r:?}"
    );
    assert_unchanged(&before, &env.ad_objects().await);
    std::fs::write(env.config_path(), text).unwrap();
    env.sync_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_server_hits_the_configured_timeout() {
    let (env, _) = synced("fault-stall").await;
    let before = env.ad_objects().await;
    let port = crate::common::proxy::stall().await;
    let url = env.tb.get("SOURCE_URL").to_string();
    let text = replace_in_config(&env, &url, &format!("ldaps://127.0.0.1:{port}"));
    env.set_config_line("page_size", "200\ntimeout_secs = 2");
    let env_ref = &env;
    let t = Instant::now();
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync"]));
    let took = t.elapsed();
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no answer within 2 s"), "{r:?}");
    assert!(
        took < Duration::from_secs(15),
        "the timeout fired: {took:?}"
    );
    assert_unchanged(&before, &env.ad_objects().await);
    std::fs::write(env.config_path(), text).unwrap();
    env.sync_ok();
}

#[tokio::test]
async fn a_disabled_service_account_is_a_clear_bind_error() {
    let (env, _) = synced("fault-locked").await;
    // A second account, created disabled (userAccountControl 514).
    let name = crate::common::unique("locked");
    let dn = format!("CN={name},CN=Users,{}", env.tb.get("TARGET_BASE_DN"));
    let pw = "Locked-Acc0unt-Pw!";
    let quoted: Vec<u8> = format!("\"{pw}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    admin
        .add_binary(
            &dn,
            vec![
                ("objectClass", vec![b"user".to_vec()]),
                (
                    "sAMAccountName",
                    vec![name.chars().take(20).collect::<String>().into_bytes()],
                ),
                ("userAccountControl", vec![b"514".to_vec()]),
                ("unicodePwd", vec![quoted]),
            ],
        )
        .await
        .unwrap();
    let pw_file = env.dir.join("locked.pw");
    std::fs::write(&pw_file, pw).unwrap();
    std::fs::set_permissions(
        &pw_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let text = replace_in_config(&env, env.tb.get("TARGET_SVC_DN"), &dn);
    std::fs::write(
        env.config_path(),
        std::fs::read_to_string(env.config_path())
            .unwrap()
            .replacen(
                env.tb.get("TARGET_SVC_PASSWORD_FILE"),
                pw_file.to_str().unwrap(),
                1,
            ),
    )
    .unwrap();
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("invalid credentials") && r.stderr.contains(&dn),
        "{r:?}"
    );
    // AD says why: data 533 is "account disabled".
    assert!(r.stderr.contains("data 533"), "{r:?}");
    assert!(!r.stderr.contains(pw));
    std::fs::write(env.config_path(), text).unwrap();
    env.sync_ok();
}

#[tokio::test]
async fn a_missing_target_ou_is_named_and_nothing_is_written() {
    let (env, _) = synced("fault-ou").await;
    let missing = format!("OU=gone-{},{}", std::process::id(), env.tb.get("TARGET_OU"));
    let text = replace_in_config(
        &env,
        &format!("base_dn = \"{}\"", env.target_ou),
        &format!("base_dn = \"{missing}\""),
    );
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("target OU {missing} does not exist")),
        "{r:?}"
    );
    let check = env.absync(&["check"]);
    assert_eq!(check.code, 2);
    assert!(check.stderr.contains("does not exist"), "{check:?}");
    std::fs::write(env.config_path(), text).unwrap();
    let again = env.sync_ok();
    assert!(
        summary_line(&again, "added").contains(NO_WRITES),
        "{again:?}"
    );
}

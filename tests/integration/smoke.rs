//! Smoke tests of the library's LDAP client against both real servers.

use std::collections::HashSet;

use absync::ldap::{Conn, LdapError, Transport};
use absync::secret::Secret;
use ldap3::{Mod, Scope};

use crate::common::testbed;

fn set(values: &[&str]) -> HashSet<String> {
    values.iter().map(|v| v.to_string()).collect()
}

#[tokio::test]
async fn binds_to_both_servers_over_ldaps_with_verification() {
    let tb = testbed();
    let source = Conn::connect(&tb.source_sync()).await.expect("source bind");
    assert!(source.url().starts_with("ldaps://127.0.0.1:"));
    source.unbind().await;
    let target = Conn::connect(&tb.target_svc()).await.expect("target bind");
    assert!(target.url().starts_with("ldaps://127.0.0."));
    target.unbind().await;
}

#[tokio::test]
async fn paged_search_returns_every_entry_where_an_unpaged_one_stops_at_1000() {
    let tb = testbed();
    let base = tb.new_source_subtree("paged", 11, 1200, 12);
    let mut conn = Conn::connect(&tb.source_sync()).await.unwrap();

    // The sync account has production-like limits: unpaged stops at 1,000.
    let mut raw = conn_ldap3(&tb.source_sync()).await;
    let unpaged = raw
        .search(
            &format!("ou=People,{base}"),
            Scope::OneLevel,
            "(objectClass=nhsPerson)",
            vec!["uid"],
        )
        .await
        .unwrap();
    assert_eq!(unpaged.1.rc, 4, "unpaged search should hit the size limit");
    assert_eq!(unpaged.0.len(), 1000);

    // Paged: everything, in several pages.
    let mut search = conn
        .paged_search(
            &format!("ou=People,{base}"),
            Scope::OneLevel,
            "(objectClass=nhsPerson)",
            vec!["uid".into(), "entryUUID".into(), "nhsOdsCode".into()],
            250,
        )
        .await
        .unwrap();
    let mut uuids = HashSet::new();
    while let Some(e) = search.next().await.unwrap() {
        let uuid = e.attrs["entryUUID"][0].clone();
        assert!(e.attrs.contains_key("nhsOdsCode"), "{e:?}");
        assert!(
            !e.attrs.contains_key("mail"),
            "only the requested attributes"
        );
        uuids.insert(uuid);
    }
    let summary = search.finish().await.unwrap();
    assert_eq!(summary.entries, 1200);
    assert_eq!(uuids.len(), 1200);
}

/// A raw ldap3 handle bound like `Conn`, to check what the server does
/// without absync's paging.
async fn conn_ldap3(ep: &absync::ldap::Endpoint) -> ldap3::Ldap {
    let cfg = absync::ldap::tls_config(ep.ca_file.as_ref().unwrap()).unwrap();
    let settings = ldap3::LdapConnSettings::new().set_config(cfg);
    let (conn, mut ldap) = ldap3::LdapConnAsync::with_settings(settings, ep.url())
        .await
        .unwrap();
    ldap3::drive!(conn);
    ldap.simple_bind(&ep.bind_dn, ep.password.expose())
        .await
        .unwrap()
        .success()
        .unwrap();
    ldap
}

#[tokio::test]
async fn service_account_creates_reads_renames_and_deletes_a_contact_in_its_ou() {
    let tb = testbed();
    let ou = tb.new_target_ou("smoke-contact").await;
    let mut svc = Conn::connect(&tb.target_svc()).await.unwrap();
    // An RDN with an escaped comma and non-ASCII letters, as real names have.
    let dn = format!("CN=O'Brien\\, Siân,{ou}");
    svc.add(
        &dn,
        vec![
            ("objectClass".into(), set(&["contact"])),
            ("givenName".into(), set(&["Siân"])),
            ("sn".into(), set(&["O'Brien"])),
            ("mail".into(), set(&["sian.obrien@nhs.net"])),
            ("telephoneNumber".into(), set(&["+44 1632 960123"])),
        ],
    )
    .await
    .expect("add contact");

    let e = svc
        .read(&dn, &["mail", "sn", "objectClass"])
        .await
        .unwrap()
        .expect("contact is there");
    assert_eq!(e.attrs["mail"], vec!["sian.obrien@nhs.net"]);
    assert_eq!(e.attrs["sn"], vec!["O'Brien"]);

    svc.modify(
        &dn,
        vec![Mod::Replace("title".into(), set(&["Staff Nurse"]))],
    )
    .await
    .expect("modify");
    svc.rename(&dn, "CN=Siân O'Brien", None)
        .await
        .expect("rename");
    let renamed = format!("CN=Siân O'Brien,{ou}");
    let e = svc.read(&renamed, &["title"]).await.unwrap().unwrap();
    assert_eq!(e.attrs["title"], vec!["Staff Nurse"]);
    assert!(svc.read(&dn, &["cn"]).await.unwrap().is_none());

    svc.delete(&renamed).await.expect("delete");
    assert!(svc.read(&renamed, &["cn"]).await.unwrap().is_none());
}

#[tokio::test]
async fn mail_enabled_contact_with_exchange_attributes() {
    let tb = testbed();
    assert_eq!(
        tb.get("TARGET_EXCHANGE_SCHEMA"),
        "1",
        "the test bed must be started with --exchange-schema"
    );
    let ou = tb.new_target_ou("smoke-mail").await;
    let mut svc = Conn::connect(&tb.target_svc()).await.unwrap();
    let dn = format!("CN=Aoife Murphy,{ou}");
    svc.add(
        &dn,
        vec![
            ("objectClass".into(), set(&["contact"])),
            ("mail".into(), set(&["aoife.murphy@nhs.net"])),
            ("mailNickname".into(), set(&["aoife.murphy"])),
            ("targetAddress".into(), set(&["SMTP:aoife.murphy@nhs.net"])),
            (
                "proxyAddresses".into(),
                set(&["SMTP:aoife.murphy@nhs.net", "smtp:am@nhs.net"]),
            ),
            ("msExchHideFromAddressLists".into(), set(&["TRUE"])),
        ],
    )
    .await
    .expect("add mail-enabled contact");
    let e = svc
        .read(
            &dn,
            &[
                "mailNickname",
                "targetAddress",
                "msExchHideFromAddressLists",
            ],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.attrs["mailNickname"], vec!["aoife.murphy"]);
    assert_eq!(e.attrs["targetAddress"], vec!["SMTP:aoife.murphy@nhs.net"]);
    assert_eq!(e.attrs["msExchHideFromAddressLists"], vec!["TRUE"]);
    svc.delete(&dn).await.unwrap();
}

#[tokio::test]
async fn wrong_ca_gives_a_clear_tls_error() {
    let tb = testbed();
    let mut ep = tb.target_svc();
    // The source's CA did not sign the target's certificate.
    ep.ca_file = Some(tb.path("SOURCE_CA"));
    let err = Conn::connect(&ep).await.err().expect("must fail");
    assert!(matches!(err, LdapError::Tls { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("TLS handshake failed"), "{msg}");
    assert!(
        msg.contains(tb.get("SOURCE_CA")),
        "names the CA file: {msg}"
    );
    assert!(
        msg.contains(tb.get("TARGET_URL")),
        "names the server: {msg}"
    );
}

#[tokio::test]
async fn wrong_password_gives_a_clear_bind_error_without_the_password() {
    let tb = testbed();
    for mut ep in [tb.target_svc(), tb.source_sync()] {
        ep.password = Secret::new("Wr0ng-Passw0rd!");
        let err = Conn::connect(&ep).await.err().expect("must fail");
        let msg = err.to_string();
        assert!(matches!(err, LdapError::Bind { rc: 49, .. }), "{err:?}");
        assert!(msg.contains("invalid credentials"), "{msg}");
        assert!(msg.contains(&ep.bind_dn), "{msg}");
        assert!(!msg.contains("Wr0ng-Passw0rd!"), "{msg}");
        assert!(!format!("{err:?}").contains("Wr0ng-Passw0rd!"));
    }
}

#[tokio::test]
async fn service_account_is_refused_outside_its_ou() {
    let tb = testbed();
    let mut svc = Conn::connect(&tb.target_svc()).await.unwrap();
    let dn = format!(
        "CN=absync smoke {},CN=Users,{}",
        std::process::id(),
        tb.get("TARGET_BASE_DN")
    );
    let err = svc
        .add(
            &dn,
            vec![
                ("objectClass".into(), set(&["contact"])),
                ("sn".into(), set(&["Outside"])),
            ],
        )
        .await
        .expect_err("write outside the OU must be refused");
    assert_eq!(err.result_code(), Some(50), "{err}");
    assert!(err.to_string().contains("insufficient access"), "{err}");
}

#[tokio::test]
async fn search_from_the_domain_root_collects_references_without_panicking() {
    let tb = testbed();
    let mut svc = Conn::connect(&tb.target_svc()).await.unwrap();
    let mut search = svc
        .paged_search(
            tb.get("TARGET_BASE_DN"),
            Scope::Subtree,
            "(objectClass=organizationalUnit)",
            vec!["ou".into()],
            50,
        )
        .await
        .unwrap();
    let mut ous = Vec::new();
    while let Some(e) = search.next().await.unwrap() {
        ous.push(e.dn);
    }
    let summary = search.finish().await.unwrap();
    assert!(
        ous.iter().any(|dn| dn == tb.get("TARGET_OU")),
        "managed OU found: {ous:?}"
    );
    assert!(
        !summary.referrals.is_empty(),
        "AD returns continuation references from the domain root"
    );
}

#[tokio::test]
async fn plain_text_is_refused_unless_allowed_and_loopback() {
    let tb = testbed();
    let mut ep = tb.source_sync();
    ep.urls = vec![tb.get("SOURCE_LDAP_URL").to_string()];
    // ldap:// with the LDAPS transport is a configuration mistake.
    let err = Conn::connect(&ep).await.err().unwrap();
    assert!(matches!(err, LdapError::Url { .. }), "{err}");
    // Explicitly allowed and on loopback: works.
    ep.transport = Transport::Plain;
    Conn::connect(&ep).await.expect("plain bind on loopback");
    // Explicitly allowed but not loopback: refused before connecting.
    ep.urls = vec!["ldap://192.0.2.1:389".into()];
    let err = Conn::connect(&ep).await.err().unwrap();
    assert!(matches!(err, LdapError::PlainRefused { .. }), "{err}");
    // StartTLS upgrades the plain port and verifies the certificate.
    ep.urls = vec![tb.get("SOURCE_LDAP_URL").to_string()];
    ep.transport = Transport::StartTls;
    Conn::connect(&ep).await.expect("StartTLS bind");
}

//! Mail domains: with `[mail_domains]`, an address outside the allowed
//! domains is dropped from the contact (`outside = "drop"`) or the entry is
//! refused (`"refuse"`), with the reason journaled; the mail-enabled
//! mapping's `targetAddress` and `proxyAddresses` obey the same list;
//! `check` counts the entries in scope it would change.

use absync::state::journal::Stored;

use crate::common::check::*;
use crate::common::env::SyncEnv;

const MAPPING: &str = "nhs-to-ad-mail-contact.toml";

/// (uid stem, given name, surname, mail)
type Person<'a> = (&'a str, &'a str, &'a str, &'a str);

/// Adds people to the source, each with one mail value.
fn add_people(env: &SyncEnv, org: &str, people: &[Person<'_>]) {
    let mut ldif = String::new();
    for (uid, given, sn, mail) in people {
        let uid = format!("{uid}{}", std::process::id());
        ldif.push_str(&format!(
            "dn: uid={uid},ou=People,{}\nchangetype: add\nobjectClass: inetOrgPerson\n\
             objectClass: nhsPerson\nuid: {uid}\ncn: {given} {sn}\nsn: {sn}\n\
             givenName: {given}\nmail: {mail}\nnhsOdsCode: {org}\nnhsEntryStatus: active\n\n",
            env.source_base
        ));
    }
    env.change_source(&ldif);
}

/// Replaces one person's mail in the source.
fn set_mail(env: &SyncEnv, uid: &str, mail: &str) {
    env.change_source(&format!(
        "dn: uid={uid}{},ou=People,{}\nchangetype: modify\nreplace: mail\nmail: {mail}\n-\n\n",
        std::process::id(),
        env.source_base
    ));
}

/// Appends `[mail_domains]` to the config (it stays the file's last table).
fn set_mail_domains(env: &SyncEnv, outside: &str) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let head = &text[..text.find("[mail_domains]").unwrap_or(text.len())];
    std::fs::write(
        env.config_path(),
        format!(
            "{head}[mail_domains]\nallow = [\"nhs.net\", \"NHS.uk\"]\noutside = \"{outside}\"\n"
        ),
    )
    .unwrap();
}

/// The AD contact named `cn` (attribute names lower-case), if any.
async fn contact(
    env: &SyncEnv,
    cn: &str,
) -> Option<std::collections::BTreeMap<String, Vec<String>>> {
    env.ad_objects()
        .await
        .into_iter()
        .find(|(dn, _)| {
            dn.to_lowercase()
                .starts_with(&format!("cn={},", cn.to_lowercase()))
        })
        .map(|(_, attrs)| attrs)
}

/// The newest run's records.
fn last_run(env: &SyncEnv) -> Vec<Stored> {
    let snap = env.snapshot();
    let id = snap.runs(1).unwrap()[0].id;
    snap.stored_where("run_id = ?1", &[&id]).unwrap()
}

/// The record of `op` whose DN names `cn`.
fn record_of<'a>(records: &'a [Stored], op: &str, cn: &str) -> &'a Stored {
    records
        .iter()
        .find(|s| {
            s.record.op == op
                && s.record
                    .dn
                    .as_deref()
                    .is_some_and(|d| d.contains(&format!("={cn},")))
        })
        .unwrap_or_else(|| panic!("no {op} of {cn} in {records:#?}"))
}

const ADDRESSES: [&str; 4] = ["mail", "targetaddress", "proxyaddresses", "mailnickname"];

#[tokio::test]
async fn an_outside_address_is_dropped_from_the_contact_with_its_reason_journaled() {
    let env = SyncEnv::new("maildrop", 191, 6, 2, MAPPING).await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-MD", &codes, ALL_ATTRS, &day(-1), &day(30))]);
    add_people(
        &env,
        &codes[0],
        &[
            ("spoof", "Spoof", "Outside", "spoof@nhs.net.evil.example"),
            ("alike", "Look", "Alike", "look@evilnhs.uk"),
            ("odd", "Odd", "Form", "Odd Form <odd@nhs.net>"),
            ("sub", "Sub", "Domain", "Sub.Domain@Trust.NHS.uk"),
        ],
    );
    set_mail_domains(&env, "drop");

    // check counts the three entries the list changes.
    let check = env.absync(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
    let line = check
        .stdout
        .lines()
        .find(|l| l.contains("have an address outside these domains"))
        .unwrap_or_else(|| panic!("no mail line in {check:?}"));
    assert!(
        line.contains(
            "nhs.net, nhs.uk: 3 source entries in scope have an address outside these \
             domains (outside = \"drop\": 3 would be written without it)"
        ),
        "{line}"
    );

    // The plan says what it would drop and why.
    let plan = env.absync(&["plan"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let spoof_line = plan
        .stdout
        .lines()
        .find(|l| l.contains("=Spoof Outside,"))
        .unwrap_or_else(|| panic!("{plan:?}"));
    assert!(
        spoof_line.contains(
            "(new entry; mail, proxyAddresses, targetAddress dropped (domain \
             nhs.net.evil.example is not an allowed mail domain); mailNickname dropped \
             (made from a dropped address))"
        ),
        "{spoof_line}"
    );

    env.sync_ok();
    // Written without the address, nor anything made from it.
    for cn in ["Spoof Outside", "Look Alike", "Odd Form"] {
        let c = contact(&env, cn)
            .await
            .unwrap_or_else(|| panic!("{cn} not in AD"));
        for a in ADDRESSES {
            assert!(!c.contains_key(a), "{cn} has {a}: {c:?}");
        }
        assert_eq!(c["displayname"], vec![cn.to_string()]);
    }
    // A sub-domain of an allowed domain is allowed, in any case.
    let sub = contact(&env, "Sub Domain").await.unwrap();
    assert_eq!(sub["mail"], vec!["sub.domain@trust.nhs.uk"]);
    assert_eq!(sub["targetaddress"], vec!["SMTP:Sub.Domain@Trust.NHS.uk"]);
    assert_eq!(sub["proxyaddresses"], vec!["SMTP:Sub.Domain@Trust.NHS.uk"]);
    // The generated people's NHSmail addresses pass.
    let all = env.ad_objects().await;
    let with_mail = all.values().filter(|a| a.contains_key("mail")).count();
    let generated = env
        .source_people("(&(objectClass=nhsPerson)(mail=*@nhs.net))")
        .await
        .len();
    assert_eq!(with_mail, generated + 1, "{all:#?}");

    // The journal says which attributes went and why, and never the address.
    let records = last_run(&env);
    let spoof = record_of(&records, "add", "Spoof Outside");
    assert_eq!(
        spoof.record.reason,
        "new entry; mail, proxyAddresses, targetAddress dropped (domain \
         nhs.net.evil.example is not an allowed mail domain); mailNickname dropped (made \
         from a dropped address)"
    );
    let state = spoof.record.state.as_ref().unwrap();
    assert!(!state.attrs.contains_key("mail"), "{state:?}");
    let odd = record_of(&records, "add", "Odd Form");
    assert!(
        odd.record
            .reason
            .contains("not a well-formed mail address (holds white space or a control character)"),
        "{odd:?}"
    );
    assert_eq!(
        record_of(&records, "add", "Sub Domain").record.reason,
        "new entry"
    );
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains("spoof@"), "the outside address stays out");
    let verify = env.absync(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");

    // A full run after that writes nothing: the drop is not repeated.
    let again = env.absync(&["sync", "--full"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        summary_line(&again, "added").contains(NO_WRITES),
        "{again:?}"
    );

    // An address turning outside is dropped, with the reason; one coming
    // inside is written.
    set_mail(&env, "sub", "sub@nhs.uk.evil.com");
    set_mail(&env, "spoof", "spoof@nhs.net");
    env.sync_ok();
    let records = last_run(&env);
    assert_eq!(
        record_of(&records, "modify", "Sub Domain").record.reason,
        "attributes changed; mail, proxyAddresses, targetAddress dropped (domain \
         nhs.uk.evil.com is not an allowed mail domain); mailNickname dropped (made from a \
         dropped address)"
    );
    assert_eq!(
        record_of(&records, "modify", "Spoof Outside").record.reason,
        "attributes changed"
    );
    let sub = contact(&env, "Sub Domain").await.unwrap();
    for a in ADDRESSES {
        assert!(!sub.contains_key(a), "Sub Domain has {a}: {sub:?}");
    }
    let spoof = contact(&env, "Spoof Outside").await.unwrap();
    assert_eq!(spoof["mail"], vec!["spoof@nhs.net"]);
    assert_eq!(spoof["proxyaddresses"], vec!["SMTP:spoof@nhs.net"]);
}

#[tokio::test]
async fn an_entry_with_an_outside_address_is_refused_when_configured() {
    let env = SyncEnv::new("mailrefuse", 192, 4, 2, MAPPING).await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-MR", &codes, ALL_ATTRS, &day(-1), &day(30))]);
    add_people(
        &env,
        &codes[1],
        &[
            ("spoof", "Spoof Refused", "Outside", "spoof@gmail.com"),
            ("many", "Several", "Ats", "a@b@nhs.net.evil"),
            ("fine", "Fine", "Inside", "fine@x.nhs.net"),
        ],
    );
    set_mail_domains(&env, "refuse");

    let check = env.absync(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(
        check.stdout.contains(
            "2 source entries in scope have an address outside these domains \
             (outside = \"refuse\": 2 would be refused)"
        ),
        "{check:?}"
    );

    let run = env.sync_ok();
    assert!(
        summary_line(&run, "rejected").contains("rejected 2"),
        "{run:?}"
    );
    assert!(contact(&env, "Spoof Refused Outside").await.is_none());
    assert!(contact(&env, "Several Ats").await.is_none());
    let fine = contact(&env, "Fine Inside").await.unwrap();
    assert_eq!(fine["proxyaddresses"], vec!["SMTP:fine@x.nhs.net"]);

    // The normal reject path: a record with the reason, nothing written.
    let records = last_run(&env);
    let rejects: Vec<&Stored> = records.iter().filter(|s| s.record.op == "reject").collect();
    assert_eq!(rejects.len(), 2, "{rejects:#?}");
    let of = |uid: &str| {
        rejects
            .iter()
            .find(|s| {
                s.record
                    .dn
                    .as_deref()
                    .is_some_and(|d| d.starts_with(&format!("uid={uid}")))
            })
            .unwrap_or_else(|| panic!("no reject of {uid} in {rejects:#?}"))
    };
    let spoof = of("spoof");
    assert_eq!(
        (spoof.record.outcome.as_str(), spoof.record.reason.as_str()),
        ("withheld", "invalid entry")
    );
    let why = spoof.record.error.as_deref().unwrap();
    assert!(
        why.starts_with(
            "an address outside the allowed mail domains (mail_domains.outside = \"refuse\"): "
        ),
        "{why}"
    );
    // The mail-enabled mapping's addresses are held to the list too.
    for part in [
        "mail: domain gmail.com is not an allowed mail domain",
        "proxyAddresses: domain gmail.com is not an allowed mail domain",
        "targetAddress: domain gmail.com is not an allowed mail domain",
    ] {
        assert!(why.contains(part), "{why}");
    }
    let why = of("many").record.error.as_deref().unwrap();
    assert!(
        why.contains("mail: not a well-formed mail address (several @)"),
        "{why}"
    );
}

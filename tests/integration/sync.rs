//! The sync engine end to end: slapd → absync → Samba AD, checked with
//! independent searches of AD and with the journal.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::check::*;
use crate::common::env::SyncEnv;

#[tokio::test]
async fn initial_sync_lands_exactly_the_authorised_entries_then_a_rerun_writes_nothing() {
    let env = SyncEnv::new("initial", 21, 2500, 20, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    let covered: Vec<String> = orgs[..8].to_vec();
    // No phone numbers under this agreement.
    let attrs: Vec<&str> = ALL_ATTRS
        .iter()
        .copied()
        .filter(|a| *a != "telephoneNumber" && *a != "mobile")
        .collect();
    env.write_agreements(&[("DSA-T-001", &covered, &attrs, &day(-30), &day(30))]);

    let check = env.absync(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
    let run = env.sync_ok();

    // Independent view of the source: active people in covered orgs.
    let source = env.source_people("(objectClass=nhsPerson)").await;
    let expected: BTreeSet<String> = source
        .iter()
        .filter(|(_, a)| covered.contains(&a["nhsodscode"][0]))
        .filter(|(_, a)| a["nhsentrystatus"][0] != "leaver")
        .map(|(u, _)| u.clone())
        .collect();
    assert!(expected.len() > 300, "enough test data: {}", expected.len());

    let ad = by_anchor(&env.ad_objects().await);
    let landed: BTreeSet<String> = ad.keys().cloned().collect();
    assert_eq!(landed, expected, "exactly the authorised people");
    // Every attribute as the default mapping says, computed here from the
    // source entry independently of absync's mapper.
    let cut = |v: &str, n: usize| v.trim().chars().take(n).collect::<String>();
    let first = |src: &BTreeMap<String, Vec<String>>, a: &str| src.get(a).map(|v| v[0].clone());
    for (anchor, attrs) in &ad {
        let src = &source[anchor];
        for absent in ["telephonenumber", "othertelephone", "mobile"] {
            assert!(!attrs.contains_key(absent), "no phones: {attrs:?}");
        }
        assert_eq!(attrs["objectclass"].last().unwrap(), "contact");
        let expect = |attr: &str, want: Option<String>| {
            let got = attrs.get(attr).map(|v| v.join("|"));
            assert_eq!(
                got.as_deref().map(str::trim),
                want.as_deref().map(str::trim).filter(|w| !w.is_empty()),
                "{attr} of {anchor}: {attrs:#?}\nsource {src:#?}"
            );
        };
        expect("mail", first(src, "mail").map(|m| m.trim().to_lowercase()));
        expect("sn", first(src, "sn").map(|v| cut(&v, 64)));
        expect("givenname", first(src, "givenname").map(|v| cut(&v, 64)));
        expect("title", first(src, "title").map(|v| cut(&v, 128)));
        expect("department", first(src, "nhsworkarea").map(|v| cut(&v, 64)));
        expect(
            "employeeid",
            first(src, "employeenumber").map(|v| cut(&v, 16)),
        );
        expect("info", first(src, "nhsjobrole").map(|v| cut(&v, 1024)));
        expect("company", Some(format!("NHS {}", src["nhsodscode"][0])));
        let display = first(src, "displayname")
            .filter(|d| !d.trim().is_empty())
            .unwrap_or_else(|| format!("{} {}", src["givenname"][0], src["sn"][0]));
        expect("displayname", Some(cut(&display, 256)));
    }
    assert!(
        summary_line(&run, "added").contains(&format!("added {}", expected.len())),
        "{run:?}"
    );

    // A second run with no source change makes zero writes to AD.
    let before = env.ad_objects().await;
    let again = env.sync_ok();
    assert!(
        summary_line(&again, "added").contains(NO_WRITES),
        "{again:?}"
    );
    assert_unchanged(&before, &env.ad_objects().await);
    let snap = env.snapshot();
    let runs = snap.runs(10).unwrap();
    assert_eq!(runs[0].status, "ok");
    assert!(snap.records(runs[0].id).unwrap().is_empty());
    let (terms, first): (Vec<_>, Vec<_>) = snap
        .records(runs[1].id)
        .unwrap()
        .into_iter()
        .partition(|r| r.op == "agreements");
    assert_eq!(
        terms.len(),
        1,
        "the first run journals the agreements' terms"
    );
    assert_eq!(first.len(), expected.len());
    assert!(first
        .iter()
        .all(|r| r.op == "add" && r.outcome == "applied" && r.reason == "new entry"));
    assert!(first.iter().all(|r| r.agreements == vec!["DSA-T-001"]));
    assert!(first
        .iter()
        .all(|r| r.changes.contains_key("mail") || r.changes.contains_key("sn")));
}

#[tokio::test]
async fn source_changes_become_modifies_renames_adds_and_deletes_with_reasons() {
    let env = SyncEnv::new("changes", 22, 120, 4, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    let covered = orgs[..3].to_vec();
    let outside = orgs[3].clone();
    env.write_agreements(&[("DSA-T-002", &covered, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();

    let source = env.source_people("(objectClass=nhsPerson)").await;
    let ad = by_anchor(&env.ad_objects().await);
    let mut held: Vec<&String> = ad.keys().collect();
    held.sort();
    let dn_of = |a: &String| source[a]["dn"][0].clone();
    let (modified, renamed, deleted, leaver, moved) = (held[0], held[1], held[2], held[3], held[4]);
    // The source entry of another is itself renamed (a new uid, same
    // entryUUID): its contact must not change at all.
    let source_renamed = held[5];
    let guids = env.ad_guids().await;
    let new_uid = format!("new{}", std::process::id());
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: Chief Clinical Information Officer\n-\n\n\
         dn: {}\nchangetype: modify\nreplace: sn\nsn: Ó Súilleabháin\n-\nreplace: displayName\ndisplayName: Renamed Ó Súilleabháin\n-\n\n\
         dn: {}\nchangetype: delete\n\n\
         dn: {}\nchangetype: modify\nreplace: nhsEntryStatus\nnhsEntryStatus: leaver\n-\n\n\
         dn: {}\nchangetype: modify\nreplace: nhsOdsCode\nnhsOdsCode: {outside}\n-\n\n\
         dn: uid={new_uid},ou=People,{}\nchangetype: add\nobjectClass: inetOrgPerson\nobjectClass: nhsPerson\nuid: {new_uid}\ncn: Ffion Newydd\nsn: Newydd\ngivenName: Ffion\nmail: ffion.newydd@nhs.net\nnhsOdsCode: {}\nnhsEntryStatus: active\n\n\
         dn: {}\nchangetype: modrdn\nnewrdn: uid=moved{new_uid}\ndeleteoldrdn: 1\n\n",
        dn_of(modified),
        dn_of(renamed),
        dn_of(deleted),
        dn_of(leaver),
        dn_of(moved),
        env.source_base,
        covered[0],
        dn_of(source_renamed),
    ));
    let run = env.sync_ok();
    assert!(
        summary_line(&run, "added").contains("added 1, modified 2, renamed 1, deleted 3"),
        "{run:?}"
    );

    let after = by_anchor(&env.ad_objects().await);
    assert_eq!(
        env.ad_guids().await[source_renamed],
        guids[source_renamed],
        "a renamed source entry keeps its contact, name and objectGUID"
    );
    assert_eq!(
        after[source_renamed]["usnchanged"],
        ad[source_renamed]["usnchanged"]
    );
    // Phone numbers (allowed here): the first in telephoneNumber, the rest
    // in the multi-valued otherTelephone. Valid ones in E.164: the test
    // bed's national and "+44 (0)" forms, mobiles and foreign mobiles.
    // Invalid ones as written: "(01632) …" (a range never allocated) and
    // "0161-" with a digit short (nhsgen.py).
    let e164 = |v: &str| {
        if v.starts_with("(01632) ") || v.starts_with("0161-") {
            return v.to_string();
        }
        let v = v.replacen("(0)", "", 1);
        let digits: String = v.chars().filter(char::is_ascii_digit).collect();
        if v.starts_with('+') {
            format!("+{digits}")
        } else {
            format!("+44{}", &digits[1..])
        }
    };
    let mut several = 0;
    for (anchor, attrs) in &after {
        let Some(src) = source.get(anchor) else {
            continue;
        };
        let phones: Vec<String> = src
            .get("telephonenumber")
            .map(|v| v.iter().map(|p| e164(p)).collect())
            .unwrap_or_default();
        assert_eq!(
            attrs.get("telephonenumber").cloned().unwrap_or_default(),
            phones.iter().take(1).cloned().collect::<Vec<_>>(),
            "{anchor}"
        );
        let mut rest: Vec<String> = phones.iter().skip(1).cloned().collect();
        let mut other = attrs.get("othertelephone").cloned().unwrap_or_default();
        rest.sort();
        other.sort();
        assert_eq!(other, rest, "{anchor}");
        several += usize::from(rest.len() > 1);
        if let Some(m) = src.get("mobile") {
            assert_eq!(attrs["mobile"], vec![e164(&m[0])], "{anchor}");
        }
    }
    assert!(several > 0, "someone has three phone numbers");
    assert_eq!(
        after[modified]["title"],
        vec!["Chief Clinical Information Officer"]
    );
    let r = &after[renamed];
    assert!(r["dn"][0].contains("Súilleabháin"), "{r:?}");
    assert_eq!(r["sn"], vec!["Ó Súilleabháin"]);
    for gone in [deleted, leaver, moved] {
        assert!(!after.contains_key(gone));
    }
    assert!(after
        .values()
        .any(|a| a.get("mail") == Some(&vec!["ffion.newydd@nhs.net".to_string()])));

    let snap = env.snapshot();
    let run_id = snap.runs(1).unwrap()[0].id;
    let records = snap.records(run_id).unwrap();
    let reason = |anchor: &String, op: &str| {
        records
            .iter()
            .find(|r| r.anchor.as_ref() == Some(anchor) && r.op == op)
            .map(|r| r.reason.clone())
            .unwrap_or_else(|| panic!("no {op} for {anchor} in {records:#?}"))
    };
    assert_eq!(reason(deleted, "delete"), "deleted from source");
    assert_eq!(reason(leaver, "delete"), "leaver");
    assert_eq!(reason(moved, "delete"), "left scope");
    assert_eq!(reason(renamed, "rename"), "renamed in source");
    let m = records
        .iter()
        .find(|r| r.anchor.as_ref() == Some(modified) && r.op == "modify")
        .unwrap();
    assert_eq!(
        m.changes["title"].new,
        vec!["Chief Clinical Information Officer"]
    );
    assert!(!m.changes["title"].old.is_empty());
}

#[tokio::test]
async fn agreement_changes_remove_organisations_attributes_and_everything_on_expiry() {
    let env = SyncEnv::new("agreements", 23, 150, 4, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    let a_orgs = orgs[..2].to_vec();
    let b_orgs = orgs[2..3].to_vec();
    env.write_agreements(&[
        ("DSA-A", &a_orgs, ALL_ATTRS, &day(-10), &day(10)),
        ("DSA-B", &b_orgs, ALL_ATTRS, &day(-10), &day(10)),
    ]);
    env.sync_ok();
    let before = by_anchor(&env.ad_objects().await);
    let org_of = |attrs: &BTreeMap<String, Vec<String>>| attrs["company"][0].replace("NHS ", "");
    assert!(before.values().any(|a| org_of(a) == orgs[1]));
    assert!(before.values().any(|a| a.contains_key("telephonenumber")));

    // With a grace period, soft deletes would wait in quarantine; objects
    // whose agreement is gone may not be held at all and are deleted.
    let quarantine = env.new_quarantine().await;
    env.set_safety(&format!(
        "[safety]\nmax_deletes = 1000\nmax_delete_percent = 100\ndelete_grace = \"7d\"\nquarantine_ou = \"{quarantine}\"\n"
    ));
    // Organisation removed from A, telephoneNumber dropped from A, B expired.
    let fewer: Vec<&str> = ALL_ATTRS
        .iter()
        .copied()
        .filter(|a| *a != "telephoneNumber")
        .collect();
    env.write_agreements(&[
        ("DSA-A", &a_orgs[..1], &fewer, &day(-10), &day(10)),
        ("DSA-B", &b_orgs, ALL_ATTRS, &day(-10), &day(-1)),
    ]);
    env.sync_ok();
    let after = by_anchor(&env.ad_objects().await);
    assert!(!after.is_empty());
    assert!(
        after.values().all(|a| org_of(a) == orgs[0]),
        "only the first org remains"
    );
    assert!(after.values().all(|a| !a.contains_key("telephonenumber")));
    assert_eq!(
        env.ad_guids().await.len(),
        after.len(),
        "nothing waits in quarantine"
    );

    let snap = env.snapshot();
    let records = snap.records(snap.runs(1).unwrap()[0].id).unwrap();
    let reasons: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.op == "delete")
        .map(|r| r.reason.as_str())
        .collect();
    // A delete whose agreement ended names it and its last day.
    let ended = format!("agreement DSA-B ended {}", day(-1));
    assert_eq!(
        reasons,
        BTreeSet::from([ended.as_str(), "organisation removed"])
    );
    assert!(records.iter().any(|r| r.op == "modify"
        && r.changes
            .get("telephoneNumber")
            .is_some_and(|c| c.new.is_empty())));
    assert_eq!(snap.count().unwrap() as usize, after.len());

    // A second agreement for the same organisation, allowing only phone
    // numbers: the organisation gets the union of the two.
    env.write_agreements(&[
        ("DSA-A", &a_orgs[..1], &fewer, &day(-10), &day(10)),
        ("DSA-B", &b_orgs, ALL_ATTRS, &day(-10), &day(-1)),
        (
            "DSA-C",
            &a_orgs[..1],
            &["telephoneNumber"],
            &day(-10),
            &day(10),
        ),
    ]);
    env.sync_ok();
    let union = by_anchor(&env.ad_objects().await);
    assert_eq!(union.len(), after.len());
    assert!(union.values().any(|a| a.contains_key("telephonenumber")));
    assert!(union.values().all(|a| a.contains_key("sn")));
    let snap = env.snapshot();
    let records = snap.records(snap.runs(1).unwrap()[0].id).unwrap();
    let phones: Vec<_> = records
        .iter()
        .filter(|r| r.op == "modify" && r.changes.contains_key("telephoneNumber"))
        .collect();
    assert!(!phones.is_empty());
    assert!(
        phones
            .iter()
            .all(|r| r.agreements == vec!["DSA-A".to_string(), "DSA-C".to_string()]),
        "{phones:#?}"
    );
}

#[tokio::test]
async fn mail_enabled_mapping_writes_exchange_routing_attributes() {
    let env = SyncEnv::new("mailmap", 24, 60, 2, "nhs-to-ad-mail-contact.toml").await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-M", &orgs, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    let source = env.source_people("(objectClass=nhsPerson)").await;
    let ad = by_anchor(&env.ad_objects().await);
    assert!(!ad.is_empty());
    let mut with_mail = 0;
    for (anchor, attrs) in &ad {
        match source[anchor].get("mail") {
            Some(mail) => {
                with_mail += 1;
                let mail = &mail[0];
                assert_eq!(attrs["targetaddress"], vec![format!("SMTP:{mail}")]);
                assert_eq!(attrs["proxyaddresses"], vec![format!("SMTP:{mail}")]);
                let alias = &attrs["mailnickname"][0];
                assert!(mail.starts_with(&format!("{alias}@")), "{alias} {mail}");
            }
            None => {
                for a in ["targetaddress", "proxyaddresses", "mailnickname", "mail"] {
                    assert!(
                        !attrs.contains_key(a),
                        "{a} without a source mail: {attrs:?}"
                    );
                }
            }
        }
    }
    assert!(with_mail > 0);
}

#[tokio::test]
async fn an_entry_ad_refuses_fails_alone_is_journaled_with_ads_text_and_retried() {
    let env = SyncEnv::new("refused", 25, 40, 2, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-R", &orgs, ALL_ATTRS, &day(-1), &day(1))]);
    // A mapping without the title limit: AD refuses a title over 128 characters.
    let shipped = std::fs::read_to_string(
        crate::common::testbed::repo_root().join("mappings/nhs-to-ad-contact.toml"),
    )
    .unwrap();
    let unlimited = shipped.replace("max_length = 128", "");
    assert_ne!(unlimited, shipped);
    let mapping = env.dir.join("no-title-limit.toml");
    std::fs::write(&mapping, unlimited).unwrap();
    env.write_config(mapping.to_str().unwrap(), "");
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let victim = people
        .iter()
        .find(|(_, a)| a["nhsentrystatus"][0] == "active")
        .map(|(u, a)| (u.clone(), a["dn"][0].clone()))
        .unwrap();
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: {}\n-\n",
        victim.1,
        "Consultant ".repeat(20)
    ));

    let first = env.absync(&["sync"]);
    assert_eq!(first.code, 1, "some entries failed: {first:?}");
    assert!(
        summary_line(&first, "conflicts").contains("failed 1"),
        "{first:?}"
    );
    let ad = by_anchor(&env.ad_objects().await);
    assert!(!ad.contains_key(&victim.0));
    let expected = expected_anchors(&people, &orgs);
    assert_eq!(ad.len(), expected.len() - 1, "everyone else landed");

    let snap = env.snapshot();
    let run = snap.runs(1).unwrap()[0].clone();
    assert_eq!(run.status, "done with failures");
    let failed: Vec<_> = snap
        .records(run.id)
        .unwrap()
        .into_iter()
        .filter(|r| r.outcome == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0].anchor.as_deref(), Some(victim.0.as_str()));
    let error = failed[0].error.as_deref().unwrap();
    assert!(
        error.contains("(LDAP result 21)"),
        "AD's own error: {error}"
    );
    // The record says what the refused add would have written.
    assert_eq!(failed[0].op, "add");
    assert_eq!(failed[0].reason, "new entry");
    let title = &failed[0].changes["title"];
    assert!(title.old.is_empty(), "{title:?}");
    assert_eq!(title.new, vec!["Consultant ".repeat(20).trim().to_string()]);

    // Retried on the next run (and refused again, until the data is fixed).
    let second = env.absync(&["sync"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        summary_line(&second, "conflicts").contains("added 0")
            && summary_line(&second, "conflicts").contains("failed 1")
    );
    // Fixed in the mapping: the next run adds it.
    env.write_config("nhs-to-ad-contact.toml", "");
    let third = env.sync_ok();
    assert!(
        summary_line(&third, "added").contains("added 1,"),
        "{third:?}"
    );
    assert_eq!(
        by_anchor(&env.ad_objects().await)[&victim.0]["title"][0]
            .chars()
            .count(),
        128
    );
}

//! A corpus of entries built to break things, synced in one run: each ends
//! escaped and stored, truncated as the mapping says, or refused with a
//! journal record naming the reason; none crashes the run or harms another.

use std::collections::BTreeMap;

use crate::common::check::*;
use crate::common::env::SyncEnv;

struct Case {
    uid: String,
    given: String,
    sn: String,
    ods: String,
    extra: Vec<(&'static str, String)>,
}

fn ldif(base: &str, c: &Case) -> String {
    let mut lines = vec![
        format!("dn: uid={},ou=People,{base}", c.uid),
        "changetype: add".into(),
        "objectClass: inetOrgPerson".into(),
        "objectClass: nhsPerson".into(),
        format!("uid: {}", c.uid),
    ];
    let attr = |lines: &mut Vec<String>, k: &str, v: &str| {
        let mut s = String::new();
        absync::engine::render::ldif_line(&mut s, k, v);
        lines.push(s.trim_end().to_string());
    };
    attr(&mut lines, "givenName", &c.given);
    attr(&mut lines, "sn", &c.sn);
    attr(&mut lines, "cn", &format!("{} {}", c.given, c.sn));
    attr(&mut lines, "nhsOdsCode", &c.ods);
    attr(&mut lines, "nhsEntryStatus", "active");
    for (k, v) in &c.extra {
        match k.strip_suffix("::") {
            // Raw bytes, base64 in the LDIF.
            Some(k) => lines.push(format!("{k}:: {v}")),
            None => attr(&mut lines, k, v),
        }
    }
    lines.join("\n") + "\n\n"
}

#[tokio::test]
async fn a_corpus_of_hostile_entries_is_escaped_truncated_or_refused_one_by_one() {
    let env = SyncEnv::new("hostile-corpus", 91, 5, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    let ods = codes[0].clone();
    let mut attrs = ALL_ATTRS.to_vec();
    attrs.push("jpegPhoto");
    env.write_agreements(&[("DSA-H", &codes, &attrs, &day(-1), &day(1))]);
    let mut cases = Vec::new();
    let mut add = |given: &str, sn: &str, ods: &str, extra: Vec<(&'static str, String)>| {
        cases.push(Case {
            uid: format!("h{:03}", cases.len()),
            given: given.into(),
            sn: sn.into(),
            ods: ods.into(),
            extra,
        });
    };
    for c in [",", "+", "\"", "\\", "<", ">", ";", "=", "#"] {
        add("Mid", &format!("A{c}B"), &ods, vec![]);
        add("Lead", &format!("{c}Lead"), &ods, vec![]);
        add("Trail", &format!("Trail{c}"), &ods, vec![]);
    }
    add("Spaced", "  Both Ends  ", &ods, vec![]);
    add("Nul", "Nul\u{0}Byte", &ods, vec![]);
    add("Tab", "Tab\tAnd\nNewline", &ods, vec![]);
    add("Rtl", "\u{202E}lortnoc", &ods, vec![]);
    add("محمد", "عبدالله", &ods, vec![]);
    add("דוד", "כהן", &ods, vec![]);
    add("Combining", "Zoe\u{0308}", &ods, vec![]);
    add("Emoji", "😀 Smile", &ods, vec![]);
    add("Doctor", "👩\u{200D}⚕️", &ods, vec![]);
    add(
        "Long",
        "Title",
        &ods,
        vec![("title", "Consultant ".repeat(1000))],
    );
    add(
        "Huge",
        "Name",
        &ods,
        vec![("displayName", "N".repeat(10_240))],
    );
    let phones: Vec<(&'static str, String)> = (0..1000)
        .map(|i| ("telephoneNumber", format!("01632 {:06}", 100_000 + i)))
        .collect();
    add("Many", "Phones", &ods, phones);
    add("Filter", "*)(objectClass=*", &ods, vec![]);
    add("admin)(|(uid=*", "Injection", &ods, vec![]);
    add("Dn", "x,OU=Evil,DC=sync,DC=test", &ods, vec![]);
    add("Dn2", "x\\,OU=Evil", &ods, vec![]);
    add("Ods", "Injected", &format!("{ods})(uid=*"), vec![]);
    add("Ods2", "Star", "*", vec![]);
    add("Same", "Person", &ods, vec![]);
    add("Same", "Person", &ods, vec![]);
    add("Same", "Person", &ods, vec![]);
    add(
        "Mail",
        "Collision",
        &ods,
        vec![("mail", "taken@nhs.net".into())],
    );
    add(
        "Mail",
        "Upper",
        &ods,
        vec![("mail", "  MIXED.Case@NHS.net ".into())],
    );
    add("Empty", " ", &ods, vec![]);
    // Bytes that are not UTF-8 (0xFF 0xFE ...) in a binary attribute an
    // agreement allows but the mapping does not copy.
    add(
        "Binary",
        "Photo",
        &ods,
        vec![("jpegPhoto::", "//7/2P/gABBK".into())],
    );
    assert_eq!(cases.len(), 52);
    let text: String = cases.iter().map(|c| ldif(&env.source_base, c)).collect();
    env.change_source(&text);

    // An object absync does not own already has one person's mail.
    let mut admin = absync::ldap::Conn::connect(&env.tb.target_admin())
        .await
        .unwrap();
    admin
        .add(
            &format!("CN=Someone Else,{}", env.target_ou),
            vec![
                ("objectClass".into(), ["contact".into()].into()),
                ("mail".into(), ["taken@nhs.net".into()].into()),
            ],
        )
        .await
        .unwrap();

    let run = env.absync(&["sync"]);
    assert!(run.code == 0 || run.code == 1, "the run completes: {run:?}");
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let uuid_of: BTreeMap<String, String> = people
        .iter()
        .map(|(u, a)| (a["uid"][0].clone(), u.clone()))
        .collect();
    let ad = by_anchor(&env.ad_objects().await);
    let snap = env.snapshot();
    let records = snap.records(snap.runs(1).unwrap()[0].id).unwrap();
    let journaled = |anchor: &str| {
        records
            .iter()
            .find(|r| r.anchor.as_deref() == Some(anchor) && r.outcome != "applied")
    };
    let mut refused = Vec::new();
    for c in &cases {
        let uuid = &uuid_of[&c.uid];
        if c.ods != ods {
            assert!(!ad.contains_key(uuid), "{}: outside every agreement", c.uid);
            continue;
        }
        match ad.get(uuid) {
            Some(o) => {
                let dn = &o["dn"][0];
                assert!(dn.ends_with(&env.target_ou), "{dn} escaped the OU");
                assert_eq!(
                    absync::dn::parent(dn).to_lowercase(),
                    env.target_ou.to_lowercase()
                );
                let cn = &o["cn"][0];
                assert!(
                    cn.chars().count() <= 64 && !cn.chars().any(char::is_control),
                    "{cn:?}"
                );
                assert_eq!(cn, cn.trim());
                if let Some(t) = o.get("title") {
                    assert!(t[0].chars().count() <= 128);
                }
                if let Some(d) = o.get("displayname") {
                    assert!(d[0].chars().count() <= 256);
                }
            }
            None => {
                let r = journaled(uuid)
                    .unwrap_or_else(|| panic!("{} is neither in AD nor journaled: {run:?}", c.uid));
                assert!(r.error.as_deref().is_some_and(|e| !e.is_empty()), "{r:?}");
                refused.push(format!("{} {}", c.given, c.sn));
            }
        }
    }
    // Exactly these are refused; the two outside every agreement (Ods,
    // Ods2) are not held; every other case is stored.
    assert_eq!(refused, vec!["Mail Collision"], "{run:?}");
    // None affects the others: the directory's own people are all there,
    // with their names as the source has them.
    let base: Vec<_> = people
        .iter()
        .filter(|(_, a)| a["uid"][0].len() > 4 || !a["uid"][0].starts_with('h'))
        .collect();
    assert_eq!(base.len(), 5);
    for (uuid, a) in base {
        let o = ad
            .get(uuid)
            .unwrap_or_else(|| panic!("{} is missing", a["dn"][0]));
        assert_eq!(o["sn"], a["sn"], "{uuid}");
        assert_eq!(o["givenname"], a["givenname"], "{uuid}");
    }
    let photo = &uuid_of[&cases.iter().find(|c| c.sn == "Photo").unwrap().uid];
    assert!(
        !ad[photo].contains_key("jpegphoto"),
        "not mapped, not copied"
    );
    let mail_case = &uuid_of[&cases.iter().find(|c| c.sn == "Collision").unwrap().uid];
    assert!(!ad.contains_key(mail_case));
    assert_eq!(journaled(mail_case).unwrap().op, "conflict");
    let upper = &uuid_of[&cases.iter().find(|c| c.sn == "Upper").unwrap().uid];
    assert_eq!(ad[upper]["mail"], vec!["mixed.case@nhs.net"]);
    let many = &uuid_of[&cases.iter().find(|c| c.sn == "Phones").unwrap().uid];
    if let Some(o) = ad.get(many) {
        assert_eq!(o["telephonenumber"].len(), 1);
    }
    // A second run changes nothing that was stored.
    let again = env.absync(&["sync"]);
    assert!(again.code == 0 || again.code == 1, "{again:?}");
    assert!(
        summary_line(&again, "added").contains("modified 0, renamed 0, deleted 0"),
        "{again:?}"
    );
    let verify = env.absync(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[tokio::test]
async fn a_shared_or_missing_anchor_is_refused_without_harming_others() {
    let env = SyncEnv::new("hostile-anchor", 92, 5, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    let ods = codes[0].clone();
    env.write_agreements(&[("DSA-H", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    // The source's anchor is employeeNumber, which nothing keeps unique.
    env.set_config_line("anchor_attribute", "\"employeeNumber\"");
    let case = |uid: &str, sn: &str, extra: Vec<(&'static str, String)>| Case {
        uid: uid.into(),
        given: "Anchor".into(),
        sn: sn.into(),
        ods: ods.clone(),
        extra,
    };
    let cases = [
        case("a1", "First", vec![("employeeNumber", "E-SHARED".into())]),
        case("a2", "Second", vec![("employeeNumber", "E-SHARED".into())]),
        case("a3", "Without", vec![]),
    ];
    let text: String = cases.iter().map(|c| ldif(&env.source_base, c)).collect();
    env.change_source(&text);

    let run = env.absync(&["sync"]);
    assert_eq!(run.code, 0, "{run:?}");
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let ad = by_anchor(&env.ad_objects().await);
    // Every generated person, by employeeNumber, with the source's name.
    let mut base = 0;
    for a in people.values().filter(|a| !a["uid"][0].starts_with('a')) {
        let number = &a["employeenumber"][0];
        let o = ad
            .get(number)
            .unwrap_or_else(|| panic!("{number} missing: {run:?}"));
        assert_eq!(o["sn"], a["sn"]);
        base += 1;
    }
    assert_eq!(base, 5);
    // Neither of the two sharing an anchor is held, whichever is read
    // first; the one without is refused; each refusal says why.
    assert!(!ad.contains_key("E-SHARED"), "{ad:?}");
    assert_eq!(ad.len(), 5, "{ad:?}");
    let snap = env.snapshot();
    let records = snap.records(snap.runs(1).unwrap()[0].id).unwrap();
    let rejects: Vec<String> = records
        .iter()
        .filter(|r| r.op == "reject")
        .map(|r| r.error.clone().unwrap_or_default())
        .collect();
    assert_eq!(rejects.len(), 3, "{records:?}");
    let shared = "2 source entries claim this anchor (compared without regard to case); \
                  neither is copied until the source is corrected";
    assert_eq!(
        rejects.iter().filter(|e| *e == shared).count(),
        2,
        "{rejects:?}"
    );
    assert!(
        rejects
            .iter()
            .any(|e| e.contains("no employeeNumber (the anchor)")),
        "{rejects:?}"
    );
    assert!(
        summary_line(&run, "rejected").contains("rejected 3"),
        "{run:?}"
    );
}

/// The anchor-case takeover: with `employeeNumber` as the anchor, a source
/// entry whose anchor is an upper-case copy of another person's must never
/// be taken for that person's contact (AD matches the anchor without regard
/// to case). Refused while absync holds the other's anchor; and when it
/// does not (its state was lost, the other person has left), the target's
/// case-blind match is still not believed: the contact is untouched.
#[tokio::test]
async fn an_anchor_that_differs_only_by_case_never_takes_over_anothers_contact() {
    let env = SyncEnv::new("hostile-anchor-case", 93, 3, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    let ods = codes[0].clone();
    env.write_agreements(&[("DSA-H", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.set_config_line("anchor_attribute", "\"employeeNumber\"");
    let person = |uid: &str, number: &str, mail: &str| Case {
        uid: uid.into(),
        given: "Vic".into(),
        sn: "Victim".into(),
        ods: ods.clone(),
        extra: vec![("employeeNumber", number.into()), ("mail", mail.into())],
    };
    env.change_source(&ldif(
        &env.source_base,
        &person("v1", "emp-victim-1", "vic.victim@nhs.net"),
    ));
    let first = env.absync(&["sync"]);
    assert_eq!(first.code, 0, "{first:?}");
    let before = env.ad_objects().await;
    let victim = by_anchor(&before)["emp-victim-1"].clone();
    assert_eq!(victim["mail"], vec!["vic.victim@nhs.net"]);

    // The attacker: the same name, the victim's anchor in upper case.
    env.change_source(&ldif(
        &env.source_base,
        &person("m1", "EMP-VICTIM-1", "attacker@evil.example"),
    ));
    let run = env.absync(&["sync"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_unchanged(&before, &env.ad_objects().await);
    let snap = env.snapshot();
    let records = snap.records(snap.runs(1).unwrap()[0].id).unwrap();
    let refused = records
        .iter()
        .find(|r| r.anchor.as_deref() == Some("EMP-VICTIM-1"))
        .unwrap_or_else(|| panic!("nothing journaled for the attacker: {records:?}"));
    assert_eq!(refused.op, "reject", "{refused:?}");
    // Whether the holder was read before it in this run or not: two
    // entries claim the anchor, compared without regard to case.
    assert!(
        refused
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("2 source entries claim this anchor"),
        "{refused:?}"
    );
    assert!(refused.dn.as_deref().unwrap_or("").starts_with("uid=m1,"));
    drop(snap);

    // Without the state, and with the victim gone from scope: the
    // attacker's add finds the name taken, and the object holding it is
    // not the attacker's, whatever AD's case-blind search says.
    std::fs::remove_dir_all(env.state_dir()).unwrap();
    env.change_source(&format!(
        "dn: uid=v1,ou=People,{}\nchangetype: modify\nreplace: nhsEntryStatus\n\
         nhsEntryStatus: leaver\n\n",
        env.source_base
    ));
    let plan = env.absync(&["sync", "--dry-run", "--format", "json"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let ops = plan_ops(&plan.stdout);
    let attacker = |op: &str| ops.contains(&("EMP-VICTIM-1".to_string(), op.to_string()));
    assert!(attacker("conflict") && !attacker("modify"), "{ops:?}");
    let run = env.absync(&["sync"]);
    assert_eq!(run.code, 0, "{run:?}");
    let after = env.ad_objects().await;
    let dn = &victim["dn"][0];
    assert_eq!(
        after.get(dn),
        before.get(dn),
        "the victim's contact was written"
    );
    assert_eq!(after[dn]["mail"], vec!["vic.victim@nhs.net"]);
    assert!(!after.values().any(|o| o
        .get("mail")
        .is_some_and(|m| m.contains(&"attacker@evil.example".to_string()))));
    let snap = env.snapshot();
    let records = snap.records(snap.runs(1).unwrap()[0].id).unwrap();
    let conflict = records
        .iter()
        .find(|r| r.anchor.as_deref() == Some("EMP-VICTIM-1"))
        .unwrap_or_else(|| panic!("nothing journaled for the attacker: {records:?}"));
    assert_eq!(conflict.op, "conflict", "{conflict:?}");
    assert!(
        conflict
            .error
            .as_deref()
            .unwrap_or("")
            .contains("an object absync does not own already has this name"),
        "{conflict:?}"
    );
}

/// A mapping that would write absync's ownership marker is refused before
/// anything is read or written, naming the file, the line and the
/// attribute; the OU is untouched.
#[tokio::test]
async fn a_mapping_that_writes_the_ownership_marker_is_refused_with_its_line() {
    let env = SyncEnv::new("hostile-mapping", 94, 3, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-H", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let first = env.absync(&["sync"]);
    assert_eq!(first.code, 0, "{first:?}");
    let before = env.ad_objects().await;
    let shipped = std::fs::read_to_string(
        crate::common::testbed::repo_root().join("mappings/nhs-to-ad-contact.toml"),
    )
    .unwrap();
    let hostile = env.dir.join("hostile-mapping.toml");
    // Claims every contact for one person: the marker, from a constant.
    std::fs::write(
        &hostile,
        format!("{shipped}\n[attributes.adminDescription]\nvalue = \"absync:x\"\n"),
    )
    .unwrap();
    let line = shipped.lines().count() + 2;
    env.write_config(hostile.to_str().unwrap(), "");
    for cmd in [&["check"][..], &["sync"][..]] {
        let run = env.absync(cmd);
        assert_eq!(run.code, 2, "{cmd:?}: {run:?}");
        let want = format!(
            "{}:{line}: attributes.adminDescription: adminDescription holds absync's \
             ownership marker",
            hostile.display()
        );
        assert!(
            run.stderr.contains(&want) || run.stdout.contains(&want),
            "{cmd:?}: {run:?}"
        );
    }
    assert_unchanged(&before, &env.ad_objects().await);
}

/// The journal of the latest run: (op, DN, error) of every record for
/// `anchor` (compared without regard to case), in the order journaled.
fn records_for(env: &SyncEnv, anchor: &str) -> Vec<(String, String, String)> {
    let snap = env.snapshot();
    let run = snap.runs(1).unwrap()[0].id;
    snap.records(run)
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.anchor
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(anchor))
        })
        .map(|r| (r.op, r.dn.unwrap_or_default(), r.error.unwrap_or_default()))
        .collect()
}

/// Source entries that copy another person's anchor (`employeeNumber`, which
/// users may be able to write), byte for byte or in upper case, and that the
/// source returns before the holder's entry: every entry claiming the anchor
/// is refused with a journaled reason, in a delta and in a full pull; the
/// holder's contact is neither written nor removed; no contact is made for
/// the copies; once they are gone, runs are as before.
#[tokio::test]
async fn an_entry_that_copies_another_persons_anchor_never_takes_over_their_contact() {
    let env = SyncEnv::new("hostile-anchor-dupe", 97, 3, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    let ods = codes[0].clone();
    env.write_agreements(&[("DSA-H", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.set_config_line("anchor_attribute", "\"employeeNumber\"");
    let person = |uid: &str, sn: &str, number: &str, mail: &str, leaver: bool| {
        let extra = vec![("employeeNumber", number.into()), ("mail", mail.into())];
        let text = ldif(
            &env.source_base,
            &Case {
                uid: uid.into(),
                given: "Vic".into(),
                sn: sn.into(),
                ods: ods.clone(),
                extra,
            },
        );
        // A leaver is outside the filter, (!(nhsEntryStatus=leaver)).
        match leaver {
            true => text.replace("nhsEntryStatus: active", "nhsEntryStatus: leaver"),
            false => text,
        }
    };
    // slapd (mdb) returns entries in the order they were added: the copies
    // are added first, outside the filter, and brought into it later.
    let bad = "attacker@evil.example";
    env.change_source(&person("m0", "Mallory", "emp-victim-1", bad, true));
    env.change_source(&person("m1", "Mallory", "EMP-VICTIM-1", bad, true));
    env.change_source(&person(
        "v1",
        "Victim",
        "emp-victim-1",
        "vic.victim@nhs.net",
        false,
    ));
    env.sync_ok();
    let before = env.ad_objects().await;
    let victim = by_anchor(&before)["emp-victim-1"].clone();
    assert_eq!(victim["mail"], vec!["vic.victim@nhs.net"]);
    assert_eq!(before.len(), 4, "{before:?}");
    let activate = |uid: &str, status: &str| {
        env.change_source(&format!(
            "dn: uid={uid},ou=People,{}\nchangetype: modify\nreplace: nhsEntryStatus\n\
             nhsEntryStatus: {status}\n\n",
            env.source_base
        ))
    };
    let refused = |records: &[(String, String, String)], claims: &str| {
        assert!(!records.is_empty());
        for (op, dn, error) in records {
            assert_eq!(op, "reject", "{records:?}");
            assert!(
                error.starts_with(&format!("{claims} source entries claim this anchor"))
                    && error.ends_with("is copied until the source is corrected"),
                "{records:?}"
            );
            assert!(!dn.is_empty(), "{records:?}");
        }
    };
    let uids = |records: &[(String, String, String)]| -> Vec<String> {
        records
            .iter()
            .map(|(_, dn, _)| dn.split(',').next().unwrap().to_string())
            .collect()
    };

    for (copy, others) in [("m0", "m1"), ("m1", "m0")] {
        activate(others, "leaver");
        activate(copy, "active");
        // A delta (modifyTimestamp: the anchor is not entryUUID), then a
        // full pull.
        for args in [&["sync"][..], &["sync", "--full"][..]] {
            let run = env.absync(args);
            assert_eq!(run.code, 0, "{args:?}: {run:?}");
            assert_unchanged(&before, &env.ad_objects().await);
            let records = records_for(&env, "emp-victim-1");
            refused(&records, "2");
            // The copy is read first, and refused like the holder (which a
            // delta reads again while it is younger than the watermark's
            // margin, five minutes).
            let read = uids(&records);
            assert_eq!(read[0], format!("uid={copy}"), "{args:?}: {records:?}");
            if args.len() == 2 {
                assert_eq!(read, vec![format!("uid={copy}"), "uid=v1".into()]);
            }
        }
    }
    // Both copies at once.
    activate("m0", "active");
    let run = env.absync(&["sync", "--full"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_unchanged(&before, &env.ad_objects().await);
    let records = records_for(&env, "emp-victim-1");
    refused(&records, "3");
    assert_eq!(uids(&records), vec!["uid=m0", "uid=m1", "uid=v1"]);

    // The copies go: the holder is read again as before, nothing removed.
    for uid in ["m0", "m1"] {
        env.change_source(&format!(
            "dn: uid={uid},ou=People,{}\nchangetype: delete\n\n",
            env.source_base
        ));
    }
    for args in [&["sync"][..], &["sync", "--full"][..]] {
        let run = env.absync(args);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        assert!(
            summary_line(&run, "pulled").contains("rejected 0"),
            "{run:?}"
        );
        assert_unchanged(&before, &env.ad_objects().await);
        assert_eq!(records_for(&env, "emp-victim-1"), vec![], "{args:?}");
    }
    // And the holder's own changes land again.
    env.change_source(&format!(
        "dn: uid=v1,ou=People,{}\nchangetype: modify\nreplace: mail\nmail: vic.new@nhs.net\n\n",
        env.source_base
    ));
    env.sync_ok();
    let after = env.ad_objects().await;
    assert_eq!(after.len(), 4);
    assert_eq!(
        by_anchor(&after)["emp-victim-1"]["mail"],
        vec!["vic.new@nhs.net"]
    );
    let records = records_for(&env, "emp-victim-1");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].0, "modify", "{records:?}");
}

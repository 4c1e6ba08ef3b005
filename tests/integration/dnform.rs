//! DN equivalence end to end: AD spells the DNs of names with RDN-special
//! characters its own way (`CN=Ann Mid\+dle`), absync another
//! (`cn=Ann Mid\2bdle`). Once converged, full runs compare the two as the
//! same name and write nothing: AD's `highestCommittedUSN` stays put.

use absync::ldap::Conn;

use crate::common::check::*;
use crate::common::env::SyncEnv;
use crate::common::testbed::Testbed;

/// One source person whose names hold awkward characters.
fn person(base: &str, ods: &str, n: usize, given: &str, sn: &str) -> String {
    let mut s = format!(
        "dn: uid=dn{n:02},ou=People,{base}\nchangetype: add\nobjectClass: inetOrgPerson\n\
         objectClass: nhsPerson\nuid: dn{n:02}\n"
    );
    for (attr, value) in [
        ("givenName", given.to_string()),
        ("sn", sn.to_string()),
        ("cn", format!("{given} {sn}")),
    ] {
        absync::engine::render::ldif_line(&mut s, attr, &value);
    }
    s.push_str(&format!(
        "mail: dn{n:02}@nhs.net\nnhsOdsCode: {ods}\nnhsEntryStatus: active\n\n"
    ));
    s
}

/// AD's domain-wide change counter, from the rootDSE.
async fn highest_usn(tb: &Testbed) -> u64 {
    let mut conn = Conn::connect(&tb.target_admin()).await.unwrap();
    let root = conn
        .read("", &["highestCommittedUSN"])
        .await
        .unwrap()
        .expect("the rootDSE");
    conn.unbind().await;
    absync::ldap::first_value(&root, "highestCommittedUSN")
        .and_then(|v| v.parse().ok())
        .expect("highestCommittedUSN in the rootDSE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_runs_after_convergence_write_nothing_on_names_with_every_dn_special_character() {
    // A test bed of its own: highestCommittedUSN is domain-wide, and tests
    // running alongside on the shared one would move it.
    let tb = tokio::task::block_in_place(|| Testbed::start_private("dnform"));
    let env = SyncEnv::new_on(tb, "dnform", 181, 3, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-DN", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let mut names: Vec<(String, String)> = vec![
        ("Ann".into(), "Mid+dle".into()),
        ("#Hash".into(), "Lead".into()),
        (" Spaced".into(), "Both Ends ".into()),
        ("Siân".into(), "Ó Súilleabháin, Jr.".into()),
        ("Zoë".into(), "Łukasz 王".into()),
        ("All".into(), ", + \" \\ < > ; = #".into()),
        ("=Eq".into(), "Semi;colon".into()),
        ("<Angle>".into(), "\"Quoted\"".into()),
        ("Back\\slash".into(), "Plus+Comma,".into()),
    ];
    for c in [",", "+", "\"", "\\", "<", ">", ";", "=", "#"] {
        names.push((format!("{c}Lead"), format!("Trail{c}")));
    }
    let text: String = names
        .iter()
        .enumerate()
        .map(|(n, (g, s))| person(&env.source_base, &codes[0], n, g, s))
        .collect();
    env.change_source(&text);

    let first = env.sync_ok();
    assert!(
        summary_line(&first, "added").contains(&format!("added {}", names.len() + 3)),
        "{first:?}"
    );
    let settle = env.sync_ok();
    assert!(
        summary_line(&settle, "added").contains(NO_WRITES),
        "{settle:?}"
    );

    // The test means something only if AD spells some name differently from
    // absync (otherwise byte equality would do).
    let snap = env.snapshot();
    let ad = by_anchor(&env.ad_objects().await);
    let respelled = ad
        .iter()
        .filter(|(anchor, o)| {
            let row = snap.get(anchor).unwrap().expect("held");
            row.dn != o["dn"][0]
        })
        .count();
    assert!(respelled > 0, "AD spells every DN as absync does: {ad:?}");
    drop(snap);
    // An auditor who copies the name as AD shows it finds the person.
    let ann = ad
        .values()
        .find(|o| o["sn"] == ["Mid+dle"])
        .expect("Ann Mid+dle in AD");
    assert!(ann["dn"][0].contains("Mid\\+dle"), "{ann:?}");
    let history = env.absync(&["journal", "history", &ann["dn"][0]]);
    assert_eq!(history.code, 0, "{history:?}");
    assert!(history.stdout.contains(" add "), "{history:?}");

    let before = env.ad_objects().await;
    let usn = highest_usn(tb).await;
    for n in 1..=2 {
        let full = env.absync(&["sync", "--full"]);
        assert_eq!(full.code, 0, "full run {n}: {full:?}");
        let line = summary_line(&full, "added");
        assert!(line.contains(NO_WRITES), "full run {n}: {full:?}");
        assert!(line.contains("drift 0;"), "full run {n}: {full:?}");
    }
    assert_unchanged(&before, &env.ad_objects().await);
    assert_eq!(
        highest_usn(tb).await,
        usn,
        "AD's highestCommittedUSN moved across two full runs after convergence"
    );
    // Nothing journaled as drift, renamed or modified after the first run.
    let snap = env.snapshot();
    let runs = snap.runs(10).unwrap();
    assert_eq!(runs.len(), 4, "{runs:?}");
    for run in runs
        .iter()
        .filter(|r| r.id != runs.iter().map(|r| r.id).min().unwrap())
    {
        let written: Vec<_> = snap
            .records(run.id)
            .unwrap()
            .into_iter()
            .filter(|r| ["drift", "rename", "modify", "add", "delete"].contains(&r.op.as_str()))
            .collect();
        assert!(written.is_empty(), "run {}: {written:?}", run.id);
    }
}

"""bench/run's peer: the naive script (bench/naive_sync.py) and the independent check
that every tool's target ends up holding the same contacts.

The naive script is the nightly sync a council admin would write: python-ldap, one
operation at a time, no snapshot, no journal. It tags its contacts
adminDescription=naive:<entryUUID>, absync adminDescription=absync:<entryUUID>, so
each writes into its own twin Samba target.

The check reads with ldapsearch as the servers' administrators (not through any tool
under test): the source's authorised active people (entryUUID, mail), and each
target's contacts in the OU with the attributes the mapping writes.
"""

import base64
import collections
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NAIVE = os.path.join(HERE, "naive_sync.py")
# python3-ldap is a Debian package: the system interpreter, whatever python3 is on PATH.
PYTHON = "/usr/bin/python3"
# What the mapping writes; both tools must write the same values.
COMPARED = ["cn", "displayName", "givenName", "sn", "mail", "title", "department", "company",
            "telephoneNumber", "otherTelephone", "mobile", "employeeID", "info"]
# Where the naive script writes other values than absync, by design of the script: it
# turns anything that looks like a UK number into +44... with a regular expression
# (0161-238172 -> +44161238172, "+44 (0)114..." -> +440114...), where absync's mapping
# writes valid numbers in E.164 and keeps invalid ones as the source has them.
NAIVE_DIFFERS = {"telephoneNumber", "otherTelephone", "mobile"}


def ensure_python_ldap():
    """Installs python3-ldap with apt-get when the system Python lacks it."""
    if subprocess.run([PYTHON, "-c", "import ldap"], capture_output=True).returncode == 0:
        return
    print("bench: installing python3-ldap (the naive script's LDAP client)", file=sys.stderr)
    p = subprocess.run(["apt-get", "install", "-y", "python3-ldap"], capture_output=True,
                       text=True)
    if p.returncode != 0:
        sys.exit(f"bench: apt-get install -y python3-ldap failed:\n{p.stderr[-2000:]}")


def naive_cmd(src, agreements, tgt):
    """The naive script's command line: SRC/TGT are the test bed's env files' keys."""
    return [PYTHON, NAIVE, "--agreements", agreements,
            "--source-url", src["SOURCE_URL"], "--source-bind-dn", src["SOURCE_SYNC_DN"],
            "--source-password-file", src["SOURCE_SYNC_PASSWORD_FILE"],
            "--source-ca", src["SOURCE_CA"], "--target-url", tgt["TARGET_URL"],
            "--target-bind-dn", tgt["TARGET_SVC_DN"],
            "--target-password-file", tgt["TARGET_SVC_PASSWORD_FILE"],
            "--target-ca", tgt["TARGET_CA"], "--target-ou", tgt["TARGET_OU"]]


def parse_ldif(text):
    """ldapsearch -LLL -o ldif-wrap=no output -> [(dn, {attribute lower: [values]})]."""
    entries = []
    for block in text.split("\n\n"):
        dn, attrs = None, collections.defaultdict(list)
        for line in block.splitlines():
            if not line or line.startswith("#"):
                continue
            k, _, v = line.partition(":")
            if v.startswith(":"):
                v = base64.b64decode(v[1:].strip()).decode("utf-8")
            else:
                v = v[1:] if v.startswith(" ") else v
            if k == "dn":
                dn = v
            else:
                attrs[k.lower()].append(v)
        if dn is not None:
            entries.append((dn, dict(attrs)))
    return entries


def search(url, ca, bind_dn, pw_file, base, scope, filt, attrs):
    p = subprocess.run(["ldapsearch", "-LLL", "-o", "ldif-wrap=no", "-H", url, "-x", "-D",
                        bind_dn, "-y", pw_file, "-b", base, "-s", scope,
                        "-E", "pr=1000/noprompt", filt] + attrs,
                       env=dict(os.environ, LDAPTLS_CACERT=ca), capture_output=True)
    if p.returncode != 0:
        sys.exit(f"bench: ldapsearch of {base} failed: {p.stderr.decode(errors='replace')}")
    return parse_ldif(p.stdout.decode("utf-8"))


def source_people(src, scope_filter):
    """{entryUUID: mail} of the authorised active people, read as the source's rootDN."""
    people = search(src["SOURCE_URL"], src["SOURCE_CA"], src["SOURCE_ADMIN_DN"],
                    src["SOURCE_ADMIN_PASSWORD_FILE"], "ou=People,o=nhs", "sub", scope_filter,
                    ["entryUUID", "mail"])
    return {e["entryuuid"][0].lower(): (e.get("mail") or [""])[0].strip().lower()
            for _, e in people}


def target_contacts(tgt, prefix):
    """(contacts in the OU, {anchor: attributes} of those tagged PREFIX, duplicate anchors)."""
    found = search(tgt["TARGET_URL"], tgt["TARGET_CA"], tgt["TARGET_ADMIN_DN"],
                   tgt["TARGET_ADMIN_PASSWORD_FILE"], tgt["TARGET_OU"], "one",
                   "(objectClass=contact)", ["adminDescription"] + COMPARED)
    by_anchor, dup = {}, 0
    for _, e in found:
        tag = (e.get("admindescription") or [""])[0]
        if tag.startswith(prefix):
            anchor = tag[len(prefix):].lower()
            dup += anchor in by_anchor
            by_anchor[anchor] = e
    return len(found), by_anchor, dup


def judge(name, want, n_ou, got, dup):
    """One target against the source: (agrees, one line saying how)."""
    missing, extra = set(want) - set(got), set(got) - set(want)
    wrong_mail = sum(1 for a in set(want) & set(got)
                     if want[a] != (got[a].get("mail") or [""])[0].lower())
    ok = not (missing or extra or dup or wrong_mail) and n_ou == len(want)
    line = (f"{name}: {n_ou} contacts, {len(got)} anchors; missing {len(missing)}, extra "
            f"{len(extra)}, duplicates {dup}, wrong mail {wrong_mail}: "
            + ("match" if ok else "**DIFFERENT**"))
    if missing:
        line += f" (missing e.g. {sorted(missing)[:3]})"
    if extra:
        line += f" (extra e.g. {sorted(extra)[:3]})"
    return ok, line


def tie_broken(va, vb):
    """Two names of one person that differ only by the tie-breaker a name clash added
    (" (ODS)", " (ODS uuid8)"): each tool meets the clash in its own order."""
    def base(v):
        return [re.sub(r" \([^()]*\)$", "", x) for x in v]
    return len(va) == len(vb) == 1 and base(va) == base(vb)


def compare(a_name, a, b_name, b, expected=()):
    """Contact by contact: the attributes two tools wrote for the same person. Differences
    in EXPECTED (the naive script's phones) and, when EXPECTED is given (another tool's
    naming order), names that differ only by a tie-breaker are told apart and do not
    count as disagreement."""
    diffs, examples = collections.Counter(), collections.defaultdict(list)
    for anchor in sorted(set(a) & set(b)):
        for attr in COMPARED:
            va = sorted(a[anchor].get(attr.lower(), []))
            vb = sorted(b[anchor].get(attr.lower(), []))
            if va == vb:
                continue
            kind = ("phone" if attr in expected else
                    "tie" if expected and attr == "cn" and tie_broken(va, vb) else "bad")
            diffs[(kind, attr)] += 1
            if len(examples[kind]) < 3:
                examples[kind].append(f"{attr}: {a_name} {va} / {b_name} {vb}")

    def told(kind):
        return (", ".join(f"{attr} on {n}" for (k, attr), n in diffs.items() if k == kind)
                + f" (e.g. {'; '.join(examples[kind])})")
    line = f"{a_name} vs {b_name}: " + (
        "**DIFFERENT** " + told("bad") if examples["bad"] else
        f"every {'other ' if diffs else ''}compared attribute equal")
    if examples["tie"]:
        line += "; name clashes met in another order, the same name with another " \
                "tie-breaker: " + told("tie")
    if examples["phone"]:
        line += "; as expected, the naive script's own phone rule wrote other " + told("phone")
    return not examples["bad"], line


def verify(when, src, scope_filter, targets, expected=None):
    """Every target of TARGETS ({name: (target env, anchor prefix)}) against the source, and
    each against the first (EXPECTED: {name: attributes it may write otherwise}):
    (all agree, [lines])."""
    want = source_people(src, scope_filter)
    lines, ok, held = [f"{when}: source {len(want)} authorised active people"], True, {}
    for name, (tgt, prefix) in targets.items():
        n_ou, got, dup = target_contacts(tgt, prefix)
        agrees, line = judge(name, want, n_ou, got, dup)
        ok &= agrees
        lines.append(line)
        held[name] = got
    names = list(held)
    for other in names[1:]:
        agrees, line = compare(names[0], held[names[0]], other, held[other],
                               (expected or {}).get(other, ()))
        ok &= agrees
        lines.append(line)
    return ok, lines

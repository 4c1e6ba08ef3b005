#!/usr/bin/python3
"""naive_sync.py: the nightly sync a council admin would write (NHS Directory -> AD
contacts, the plain way: no snapshot, no journal). bench/run measures absync against it,
each on its own twin Samba target, on the same data; it needs python3-ldap.

Usage (every option also reads the environment variable in brackets, the names
the test bed's testbed.env / target.env use):

  naive_sync.py --agreements agreements.toml
      --source-url URL [SOURCE_URL] --source-bind-dn DN [SOURCE_SYNC_DN]
      --source-password-file F [SOURCE_SYNC_PASSWORD_FILE] --source-ca F [SOURCE_CA]
      [--source-base ou=People,o=nhs] [--filter '(&(objectClass=nhsPerson)(!(nhsEntryStatus=leaver)))']
      --target-url URL [TARGET_URL] --target-bind-dn DN [TARGET_SVC_DN]
      --target-password-file F [TARGET_SVC_PASSWORD_FILE] --target-ca F [TARGET_CA]
      --target-ou DN [TARGET_OU] [--page-size 500]

Each run (nightly, from cron): reads the agreements in force today (organisations,
attributes); pages through the source for the active people of those organisations,
asking only for the allowed attributes; pages through every contact in the target
OU (its own carry adminDescription=naive:<entryUUID>; others are left alone); maps
each person to a contact (cn "givenName sn", then " (ODS)", " (ODS uuid8)" if that
name is taken; displayName, givenName, sn, lower-case mail, title, department,
company "NHS <ods>", phones in E.164, mobile, employeeID, info); then deletes the
contacts whose person is gone, renames and modifies (MOD_REPLACE of the changed
attributes only) those that differ, and adds the missing ones, one operation at a
time over one LDAPS connection per server, certificates checked against the CA files.
No snapshot, no journal, no delete threshold. Exit 0 if every write succeeded,
1 if some failed (each is printed), 2 if it could not run.
"""
import argparse
import datetime
import os
import re
import sys
import time
import tomllib

import ldap
import ldap.dn
import ldap.filter
from ldap.controls import SimplePagedResultsControl

OBJECT_CLASS = [b"top", b"person", b"organizationalPerson", b"contact"]
TAG = "naive:"
# Target attribute -> longest value AD takes (characters).
MAX_LEN = {"cn": 64, "displayName": 256, "givenName": 64, "sn": 64, "mail": 256, "title": 128,
           "department": 64, "company": 64, "telephoneNumber": 64, "otherTelephone": 64,
           "mobile": 64, "employeeID": 16, "info": 1024}
MAPPED = [a for a in MAX_LEN if a != "cn"]


def connect(url, bind_dn, password_file, ca_file):
    conn = ldap.initialize(url)
    conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
    conn.set_option(ldap.OPT_REFERRALS, 0)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 30)
    conn.set_option(ldap.OPT_X_TLS_CACERTFILE, ca_file)
    conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
    conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
    with open(password_file, encoding="utf-8") as f:
        conn.simple_bind_s(bind_dn, f.read().rstrip("\r\n"))
    return conn


def paged_search(conn, base, scope, filterstr, attrs, page_size):
    """Yields (dn, {lowercased attribute: [str values]}) over every page."""
    page = SimplePagedResultsControl(True, size=page_size, cookie=b"")
    while True:
        msgid = conn.search_ext(base, scope, filterstr, attrs, serverctrls=[page])
        _, results, _, controls = conn.result3(msgid)
        for dn, entry in results:
            if dn is not None:  # skip search references
                yield dn, {k.lower(): [v.decode("utf-8") for v in vs] for k, vs in entry.items()}
        cookies = [c.cookie for c in controls if c.controlType == SimplePagedResultsControl.controlType]
        if not cookies or not cookies[0]:
            return
        page.cookie = cookies[0]


def agreements_in_force(path):
    """{ODS code: set of allowed source attributes (lowercased)} for agreements valid today."""
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    today, allowed = datetime.date.today(), {}
    for a in doc.get("agreement", []):
        if a["valid_from"] <= today <= a["valid_until"]:
            for org in a["organisations"]:
                allowed.setdefault(org, set()).update(x.lower() for x in a["attributes"])
    return allowed


def phone(v):
    """UK and international numbers to E.164; anything else as written."""
    digits = re.sub(r"[\s().\-/]", "", v)
    for pattern, prefix, skip in ((r"\+\d{6,15}", "", 0), (r"00\d{6,15}", "+", 2), (r"0\d{9,10}", "+44", 1)):
        if re.fullmatch(pattern, digits):
            return prefix + digits[skip:]
    return v.strip()


def contact_for(entry, allowed):
    """(anchor, [cn candidates], {target attribute: [values]}) for one source person."""
    ods = entry["nhsodscode"][0]
    ok = allowed.get(ods, set())

    def vals(attr):
        return [v.strip() for v in entry.get(attr.lower(), []) if v.strip()] if attr.lower() in ok else []

    def first(attr):
        return (vals(attr) or [""])[0]

    full = " ".join(x for x in (first("givenName"), first("sn")) if x)
    phones = [phone(v) for v in vals("telephoneNumber")]
    want = {
        "displayName": first("displayName") or full or first("cn"),
        "givenName": first("givenName"), "sn": first("sn"),
        "mail": first("mail").lower(), "title": first("title"),
        "department": first("nhsWorkArea"), "company": f"NHS {ods}",
        "telephoneNumber": phones[:1], "otherTelephone": phones[1:],
        "mobile": phone(first("mobile")),
        "employeeID": first("employeeNumber"), "info": first("nhsJobRole"),
    }
    attrs = {}
    for k, v in want.items():
        v = [x[:MAX_LEN[k]].strip() for x in (v if isinstance(v, list) else [v])]
        if any(v):
            attrs[k] = [x for x in v if x]
    anchor = entry["entryuuid"][0].lower()
    base = (full or first("cn") or anchor)[:MAX_LEN["cn"]].strip()
    candidates = [base, f"{base} ({ods})", f"{base} ({ods} {anchor[:8]})"]
    return anchor, [c[:MAX_LEN["cn"]] for c in candidates], attrs


def main():
    e = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agreements", required=True)
    for opt, env in (("source-url", "SOURCE_URL"), ("source-bind-dn", "SOURCE_SYNC_DN"),
                     ("source-password-file", "SOURCE_SYNC_PASSWORD_FILE"), ("source-ca", "SOURCE_CA"),
                     ("target-url", "TARGET_URL"), ("target-bind-dn", "TARGET_SVC_DN"),
                     ("target-password-file", "TARGET_SVC_PASSWORD_FILE"), ("target-ca", "TARGET_CA"),
                     ("target-ou", "TARGET_OU")):
        ap.add_argument("--" + opt, default=e(env), required=e(env) is None)
    ap.add_argument("--source-base", default="ou=People,o=nhs")
    ap.add_argument("--filter", default="(&(objectClass=nhsPerson)(!(nhsEntryStatus=leaver)))")
    ap.add_argument("--page-size", type=int, default=500)
    a = ap.parse_args()
    t0 = time.monotonic()
    counts = dict.fromkeys(("added", "modified", "renamed", "deleted", "failed"), 0)

    # 1. The source: active people of the organisations in scope, allowed attributes only.
    allowed = agreements_in_force(a.agreements)
    if not allowed:
        print("naive_sync: no agreement in force today; nothing to do", file=sys.stderr)
        return 2
    orgs = "".join(f"(nhsOdsCode={ldap.filter.escape_filter_chars(o)})" for o in sorted(allowed))
    attrs = sorted(set().union(*allowed.values()) | {"entryuuid", "nhsodscode"})
    try:
        src = connect(a.source_url, a.source_bind_dn, a.source_password_file, a.source_ca)
        people = {}
        for _, entry in paged_search(src, a.source_base, ldap.SCOPE_SUBTREE,
                                     f"(&{a.filter}(|{orgs}))", attrs, a.page_size):
            if entry.get("entryuuid") and entry.get("nhsodscode"):
                anchor, names, want = contact_for(entry, allowed)
                people[anchor] = (names, want)
        src.unbind_s()

        # 2. The target: every contact in the OU; ours carry the tag.
        tgt = connect(a.target_url, a.target_bind_dn, a.target_password_file, a.target_ca)
        ours, taken, stale = {}, set(), []
        for dn, entry in paged_search(tgt, a.target_ou, ldap.SCOPE_ONELEVEL, "(objectClass=contact)",
                                      ["cn", "adminDescription"] + MAPPED, a.page_size):
            taken.add(entry.get("cn", [""])[0].lower())
            tag = entry.get("admindescription", [""])[0]
            if tag.startswith(TAG):
                anchor = tag[len(TAG):].lower()
                if anchor in ours:
                    stale.append(dn)  # a second object for one person
                else:
                    ours[anchor] = (dn, entry)
    except (ldap.LDAPError, OSError) as err:
        print(f"naive_sync: could not read: {err}", file=sys.stderr)
        return 2

    def write(op, what, fn, *args):
        try:
            fn(*args)
            counts[op] += 1
            return True
        except (ldap.ALREADY_EXISTS, ldap.SERVER_DOWN):
            raise
        except ldap.LDAPError as err:
            counts["failed"] += 1
            print(f"naive_sync: {op} {what} failed: {err}", file=sys.stderr)
            return False

    def rdn(name):
        return "CN=" + ldap.dn.escape_dn_chars(name)

    def place(op, what, names, fn):
        """fn(name) with the first free name (the next one if AD says it exists); the name used."""
        for name in [n for n in names if n.lower() not in taken]:
            try:
                return name if write(op, what, fn, name) else None
            except ldap.ALREADY_EXISTS:
                taken.add(name.lower())
        counts["failed"] += 1
        print(f"naive_sync: {op} {what} failed: every name is taken: {names}", file=sys.stderr)

    held = len(ours) + len(stale)
    # 3. Deletes: our contacts whose person is gone (or duplicates of one).
    for anchor in [x for x in ours if x not in people]:
        stale.append(ours.pop(anchor)[0])
    for dn in stale:
        if write("deleted", dn, tgt.delete_s, dn):
            taken.discard(ldap.dn.str2dn(dn)[0][0][1].lower())

    # 4. Renames and modifies of the contacts we already hold.
    for anchor, (dn, have) in ours.items():
        names, want = people[anchor]
        cur = have.get("cn", [""])[0]
        if cur.lower() not in [n.lower() for n in names]:
            moved = place("renamed", dn, names, lambda n: tgt.rename_s(dn, rdn(n), None, 1))
            if moved:
                taken.discard(cur.lower())
                taken.add(moved.lower())
                dn = f"{rdn(moved)},{a.target_ou}"
        mods = []
        for attr in MAPPED:
            new, old = want.get(attr, []), have.get(attr.lower(), [])
            if sorted(new) != sorted(old):
                mods.append((ldap.MOD_REPLACE, attr, [v.encode("utf-8") for v in new] or None))
        if mods:
            write("modified", dn, tgt.modify_s, dn, mods)

    # 5. Adds: people with no contact yet.
    for anchor, (names, want) in people.items():
        if anchor not in ours:
            entry = [("objectClass", OBJECT_CLASS), ("adminDescription", [(TAG + anchor).encode()])]
            entry += [(k, [v.encode("utf-8") for v in vs]) for k, vs in want.items()]
            new = place("added", anchor, names, lambda n: tgt.add_s(
                f"{rdn(n)},{a.target_ou}", entry + [("cn", [n.encode("utf-8")])]))
            if new:
                taken.add(new.lower())
    tgt.unbind_s()

    print(f"naive_sync: source {len(people)} in scope, target {held} ours before the run; "
          + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f"; {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ldap.SERVER_DOWN as err:
        print(f"naive_sync: lost the connection: {err}", file=sys.stderr)
        sys.exit(2)

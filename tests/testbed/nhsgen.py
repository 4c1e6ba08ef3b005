#!/usr/bin/env python3
"""Synthetic NHS Directory generator for the absync test bed (standard library only).

Deterministic from a seed: the same arguments always give the same LDIF.

  nhsgen.py directory --seed S --people N --orgs M [--base DN] [--emit-base]
      Organisations and people as LDIF for slapadd (offline) or ldapadd.
  nhsgen.py changes --seed S --people N --orgs M [--base DN] --change-seed C
                    [--adds A] [--modifies M] [--renames R] [--deletes D]
                    [--leavers L] [--moves V] [--dn-renames X]
      An ldapmodify change LDIF against the directory the same arguments
      generate: new people, attribute changes, surname changes (a rename in
      the target), deletions, leavers, moves to another organisation, and
      renames of the source entry itself (modrdn to a new uid; the entryUUID
      stays, so the target contact must not change).
  nhsgen.py orgs --seed S --orgs M
      The organisations' ODS codes, one per line with status, type, name and
      successor (a closed organisation's; "-" for the others), tab-separated
      (to write agreements against).

Layout under BASE (default o=nhs):
  ou=Organisations,BASE   nhsOdsCode=CODE  (nhsOrganisation)
  ou=People,BASE          uid=ID           (inetOrgPerson + nhsPerson)
A person's organisation is the nhsOdsCode attribute, so a move between
organisations is an attribute change, as in the NHS Directory.

The data holds the awkward values real directories hold: apostrophes,
accents and Welsh/Irish names, DN-special characters, two people with the
same name in one organisation, over-long job titles, several phone numbers,
missing mail, leavers, closed organisations (every 7th, with the ODS code of
its successor in nhsSuccessorOdsCode), non-UK mobiles.
"""

import argparse
import base64
import random
import string
import sys

# Ofcom's ranges for drama (numbers never given to anyone) that
# libphonenumber counts as valid: area code and the local prefix of
# 1,000 numbers (0113 496 0000-0999, ...).
DRAMA_RANGES = [("0113", "496"), ("0114", "496"), ("0116", "496"), ("0117", "496"),
                ("0118", "496"), ("0121", "496"), ("0131", "496"), ("0141", "496"),
                ("0151", "496"), ("0161", "496"), ("0191", "498"), ("020", "7946"),
                ("029", "2018")]

GIVEN = [
    "Amelia", "Oliver", "Isla", "George", "Ava", "Noah", "Mia", "Arthur", "Grace", "Leo",
    "Freya", "Oscar", "Lily", "Harry", "Evie", "Jack", "Rosie", "Charlie", "Ivy", "Thomas",
    "Sophie", "James", "Emily", "William", "Chloe", "Henry", "Ella", "Alfie", "Ruby", "Jacob",
    "Priya", "Mohammed", "Aisha", "Omar", "Fatima", "Kwame", "Chen", "Yusuf", "Anjali", "Ravi",
]
SURNAME = [
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson",
    "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood",
    "Jackson", "Clarke", "Patel", "Khan", "Ahmed", "Singh", "Begum", "Hughes", "Edwards",
    "Lewis", "Morgan", "Price", "Okafor", "Mensah", "Kowalski", "Nowak", "Murphy", "Kelly",
]
# Names real directories hold that break naive code: apostrophes, accents,
# Welsh and Irish spellings, non-Latin-1 letters, and DN-special characters.
AWKWARD_GIVEN = [
    "Siân", "Seán", "Siobhán", "Aoife", "Gwenllïan", "Llŷr", "Zoë", "Dafydd", "Ffion",
    "Niamh", "Eóin", "Bríd", "José", "François", "Björn", "Łukasz", "Nguyễn Thị", "Renée",
    "Mary-Jane", "Jean Paul",
]
AWKWARD_SURNAME = [
    "O'Brien", "D'Arcy", "Ó Súilleabháin", "Ní Bhriain", "Mac Giolla Phádraig", "ap Gruffydd",
    "Müller", "Ødegård", "Wójcik", "van der Berg", "Saint-Jean", "Smith, Jr.", "Lee+Park",
    "#Hash", "Equal=Sign", "Semi;Colon", "<Angle>", 'Quote"d', "Back\\Slash", "Trail ",
    " Lead",
]
WORK_AREAS = [
    "Cardiology", "Emergency Department", "Maternity", "Oncology", "Radiology", "Pharmacy",
    "Paediatrics", "Orthopaedics", "General Practice", "Mental Health", "Estates & Facilities",
    "Human Resources", "Information Governance", "Finance", "Digital Services",
    "Occupational Therapy", "Physiotherapy", "Pathology", "Infection Prevention & Control",
]
JOB_ROLES = [
    "R8000:Clinical Practitioner Access Role", "R8001:Nurse Access Role",
    "R8003:Health Professional Access Role", "R8004:Healthcare Student Access Role",
    "R8008:Admin/Clinical Support Access Role", "R8010:Clerical Access Role",
    "R8013:Health Records Clerk Access Role", "R5080:Referring Clinician",
]
TITLES = [
    "Staff Nurse", "Consultant Cardiologist", "Ward Manager", "Healthcare Assistant",
    "Pharmacist", "Radiographer", "Medical Secretary", "Physiotherapist", "Midwife",
    "Receptionist", "Practice Manager", "Information Governance Lead", "Clinical Fellow",
    "Head of Digital Services", "Associate Director of Nursing, Quality & Safety",
]
# Longer than AD's limit for title (128 characters): AD rejects it unless truncated.
LONG_TITLE = (
    "Deputy Divisional Director of Operations for Integrated Medicine, Emergency Care, "
    "Acute Assessment, Ambulatory Care, Frailty and Same Day Emergency Care Services "
    "(Interim, Seconded from Community Services)"
)
PLACES = [
    "Northshire", "Southvale", "Eastbrook", "Westmere", "Kingsford", "Ashby", "Bryn Celyn",
    "Llanfair", "St Aidan's", "Castleton", "Riverside", "Hillcrest", "Moorland", "Seacombe",
]
ORG_KINDS = [
    ("trust", "{place} Hospitals NHS Foundation Trust"),
    ("trust", "{place} Community Healthcare NHS Trust"),
    ("trust", "{place} Mental Health NHS Trust"),
    ("icb", "NHS {place} Integrated Care Board"),
    ("gp", "{place} Medical Practice"),
]


def ldif_value(attr, value):
    """One LDIF attribute line (RFC 2849): base64 when the value is not a safe string."""
    raw = value.encode("utf-8")
    safe = (
        raw
        and all(0x01 <= b <= 0x7F and b not in (0x0A, 0x0D) for b in raw)
        and raw[0] not in b" :<"
        and not raw.endswith(b" ")
    )
    if safe or value == "":
        return f"{attr}: {value}"
    return f"{attr}:: {base64.b64encode(raw).decode('ascii')}"


def ods_codes(rng, n):
    """n distinct, realistic ODS codes: trusts (R + 2), their sites (trust + 2 digits),
    ICBs (Q + 2), commissioners (2 digits + letter)."""
    codes, seen = [], set()
    alnum = string.ascii_uppercase + string.digits
    while len(codes) < n:
        k = rng.random()
        if k < 0.45:
            code = "R" + rng.choice(string.ascii_uppercase) + rng.choice(alnum)
        elif k < 0.75 and codes:
            parent = rng.choice([c for c in codes if len(c) == 3 and c[0] == "R"] or codes)
            code = parent[:3] + f"{rng.randrange(1, 100):02d}"
        elif k < 0.9:
            code = "Q" + "".join(rng.choice(string.ascii_uppercase) for _ in range(2))
        else:
            code = f"{rng.randrange(0, 100):02d}" + rng.choice(string.ascii_uppercase)
        if code not in seen:
            seen.add(code)
            codes.append(code)
    return codes


class Directory:
    """The generated directory, as plain data, so changes can be computed against it."""

    def __init__(self, seed, n_people, n_orgs, base):
        self.base = base
        self.rng = random.Random(f"nhsgen:{seed}")
        rng = self.rng
        self.orgs = []
        for i, code in enumerate(ods_codes(rng, n_orgs)):
            kind, pattern = rng.choice(ORG_KINDS)
            if len(code) == 5:
                kind, pattern = "site", "{place} Community Hospital"
            org = {
                "code": code,
                "name": pattern.format(place=rng.choice(PLACES)),
                "type": kind,
                # Every 7th organisation is closed (merged into a successor).
                "status": "closed" if i % 7 == 6 else "open",
            }
            if kind == "site":
                org["parent"] = code[:3]
            # A closed organisation's staff went to a successor: the one
            # generated before it (open, as i % 7 == 5). No random number is
            # drawn, so everything else is as it was for the same seed.
            if org["status"] == "closed":
                org["successor"] = self.orgs[i - 1]["code"]
            self.orgs.append(org)
        self.people = [self._person(i) for i in range(n_people)]
        # Two people with the same name in one organisation (not just by chance).
        for a, b in ((3, 4), (10, 11)):
            if b < len(self.people):
                pb = self.people[b]
                pa = self.people[a]
                pb["givenName"], pb["sn"], pb["ods"] = pa["givenName"], pa["sn"], pa["ods"]
                self._derive(pb)

    def _person(self, i):
        rng = self.rng
        awkward = rng.random() < 0.08
        given = rng.choice(AWKWARD_GIVEN if awkward and rng.random() < 0.5 else GIVEN)
        sn = rng.choice(AWKWARD_SURNAME if awkward else SURNAME)
        org = rng.choice(self.orgs)
        p = {
            "uid": f"{self.rng_id(i)}",
            "givenName": given,
            "sn": sn,
            "ods": org["code"],
            "title": LONG_TITLE if rng.random() < 0.01 else rng.choice(TITLES),
            "workArea": rng.choice(WORK_AREAS),
            "jobRoles": rng.sample(JOB_ROLES, 2 if rng.random() < 0.1 else 1),
            "status": "leaver" if rng.random() < 0.03 else "active",
            "employeeNumber": f"{rng.randrange(10**7, 10**8)}",
            "has_mail": rng.random() >= 0.05,
            "phones": [],
            "mobile": None,
        }
        for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
            p["phones"].append(self._uk_phone())
        r = rng.random()
        if r < 0.6:
            # 07400-07449: allocated mobile ranges, so valid numbers.
            p["mobile"] = f"07{400 + rng.randrange(100, 1000) % 50} {rng.randrange(100000, 1000000)}"
        elif r < 0.65:
            p["mobile"] = rng.choice(
                ["+33 6 12 34 56 78", "+1 (202) 555-0143", "+353 87 123 4567", "+91 98765 43210"]
            )
        self._derive(p)
        return p

    def rng_id(self, i):
        return f"{i + 1:07d}"

    def _uk_phone(self):
        """A landline as people write them: two valid forms (national, and
        international with the "(0)" people add), and two invalid ones
        (absync keeps them as written): the 01632 drama range, which was
        never allocated, and a Manchester number a digit short."""
        rng = self.rng
        n = rng.randrange(100000, 1000000)
        area, local = DRAMA_RANGES[(n // 1000) % len(DRAMA_RANGES)]
        line = f"{local} {n % 1000:04d}"
        return rng.choice([f"{area} {line}", f"+44 (0){area[1:]} {line}",
                           f"(01632) {n // 1000} {n % 1000:03d}", f"0161-{n}"])

    def _derive(self, p):
        """Attributes computed from others: cn, displayName, mail."""
        p["cn"] = f"{p['givenName']} {p['sn']}"
        local = "".join(
            c for c in f"{p['givenName']}.{p['sn']}".lower() if c.isascii() and (c.isalnum() or c == ".")
        ).strip(".") or "staff"
        p["mail"] = f"{local}{p['uid'][-4:]}@nhs.net" if p["has_mail"] else None

    # ---- LDIF ----
    def org_dn(self, org):
        return f"nhsOdsCode={org['code']},ou=Organisations,{self.base}"

    def person_dn(self, p):
        return f"uid={p['uid']},ou=People,{self.base}"

    def org_entry(self, org):
        lines = [f"dn: {self.org_dn(org)}", "objectClass: nhsOrganisation",
                 f"nhsOdsCode: {org['code']}", ldif_value("o", org["name"]),
                 f"nhsOrgStatus: {org['status']}", f"nhsOrgType: {org['type']}"]
        if "parent" in org:
            lines.append(f"nhsParentOdsCode: {org['parent']}")
        if "successor" in org:
            lines.append(f"nhsSuccessorOdsCode: {org['successor']}")
        return lines

    def person_attrs(self, p):
        attrs = [("cn", p["cn"]), ("sn", p["sn"]), ("givenName", p["givenName"]),
                 ("displayName", p["cn"]), ("title", p["title"]), ("nhsOdsCode", p["ods"]),
                 ("nhsWorkArea", p["workArea"]), ("nhsEntryStatus", p["status"]),
                 ("employeeNumber", p["employeeNumber"])]
        attrs += [("nhsJobRole", r) for r in p["jobRoles"]]
        if p["mail"]:
            attrs.append(("mail", p["mail"]))
        attrs += [("telephoneNumber", t) for t in p["phones"]]
        if p["mobile"]:
            attrs.append(("mobile", p["mobile"]))
        return attrs

    def person_entry(self, p):
        lines = [f"dn: {self.person_dn(p)}", "objectClass: inetOrgPerson",
                 "objectClass: nhsPerson", f"uid: {p['uid']}"]
        lines += [ldif_value(a, v) for a, v in self.person_attrs(p)]
        return lines

    def write_directory(self, out, emit_base):
        if emit_base:
            rdn = self.base.split(",")[0]
            attr, value = rdn.split("=", 1)
            oc = {"ou": "organizationalUnit", "o": "organization"}.get(attr.lower(), "organizationalUnit")
            write_entry(out, [f"dn: {self.base}", f"objectClass: {oc}", f"{attr}: {value}"])
        write_entry(out, [f"dn: ou=Organisations,{self.base}", "objectClass: organizationalUnit",
                          "ou: Organisations"])
        write_entry(out, [f"dn: ou=People,{self.base}", "objectClass: organizationalUnit",
                          "ou: People"])
        for org in self.orgs:
            write_entry(out, self.org_entry(org))
        for p in self.people:
            write_entry(out, self.person_entry(p))

    def write_changes(self, out, change_seed, adds, modifies, renames, deletes, leavers, moves,
                      dn_renames=0):
        """Change LDIF for ldapmodify. Each existing person is changed at most once."""
        rng = random.Random(f"nhsgen-changes:{change_seed}")
        pool = list(range(len(self.people)))
        rng.shuffle(pool)

        def take(k):
            picked = pool[:k]
            del pool[:k]
            return [self.people[i] for i in picked]

        for p in take(modifies):
            new_title = rng.choice([t for t in TITLES if t != p["title"]])
            new_phone = self._uk_phone()
            write_entry(out, [f"dn: {self.person_dn(p)}", "changetype: modify",
                              "replace: title", ldif_value("title", new_title), "-",
                              "replace: telephoneNumber", ldif_value("telephoneNumber", new_phone), "-"])
        for p in take(renames):
            new_sn = rng.choice([s for s in SURNAME if s != p["sn"]])
            cn = f"{p['givenName']} {new_sn}"
            write_entry(out, [f"dn: {self.person_dn(p)}", "changetype: modify",
                              "replace: sn", ldif_value("sn", new_sn), "-",
                              "replace: cn", ldif_value("cn", cn), "-",
                              "replace: displayName", ldif_value("displayName", cn), "-"])
        for p in take(deletes):
            write_entry(out, [f"dn: {self.person_dn(p)}", "changetype: delete"])
        for p in take(leavers):
            write_entry(out, [f"dn: {self.person_dn(p)}", "changetype: modify",
                              "replace: nhsEntryStatus", "nhsEntryStatus: leaver", "-"])
        for p in take(moves):
            others = [o["code"] for o in self.orgs if o["code"] != p["ods"]]
            write_entry(out, [f"dn: {self.person_dn(p)}", "changetype: modify",
                              "replace: nhsOdsCode", f"nhsOdsCode: {rng.choice(others)}", "-"])
        for p in take(dn_renames):
            write_entry(out, [f"dn: {self.person_dn(p)}", "changetype: modrdn",
                              f"newrdn: uid={p['uid']}-r{change_seed}", "deleteoldrdn: 1"])
        start = len(self.people)
        for i in range(adds):
            p = self._person(start + i)
            p["uid"] = f"9{change_seed % 100:02d}{i:05d}"
            self._derive(p)
            lines = self.person_entry(p)
            write_entry(out, [lines[0], "changetype: add"] + lines[1:])


def write_entry(out, lines):
    out.write("\n".join(lines))
    out.write("\n\n")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--people", type=int, default=1000)
        p.add_argument("--orgs", type=int, default=20)
        p.add_argument("--base", default="o=nhs")

    d = sub.add_parser("directory")
    common(d)
    d.add_argument("--emit-base", action="store_true", help="also emit the BASE entry itself")
    c = sub.add_parser("changes")
    common(c)
    c.add_argument("--change-seed", type=int, default=1)
    for k in ("adds", "modifies", "renames", "deletes", "leavers", "moves", "dn-renames"):
        c.add_argument(f"--{k}", type=int, default=0)
    o = sub.add_parser("orgs")
    common(o)
    args = ap.parse_args(argv)

    people = args.people if args.cmd != "orgs" else 0
    d = Directory(args.seed, people, args.orgs, args.base)
    out = sys.stdout
    if args.cmd == "directory":
        d.write_directory(out, args.emit_base)
    elif args.cmd == "changes":
        d.write_changes(out, args.change_seed, args.adds, args.modifies, args.renames,
                        args.deletes, args.leavers, args.moves, args.dn_renames)
    else:
        for org in d.orgs:
            out.write(f"{org['code']}\t{org['status']}\t{org['type']}\t{org['name']}"
                      f"\t{org.get('successor', '-')}\n")


if __name__ == "__main__":
    sys.stdout.reconfigure(encoding="utf-8", newline="\n")
    main(sys.argv[1:])

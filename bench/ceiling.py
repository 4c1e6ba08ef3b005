#!/usr/bin/env python3
"""Client ceiling: absync's own write rate, with a server that costs nothing.

  python3 bench/ceiling.py [--people N] [--repeat R] [--dir DIR] [--keep]
  bench/run --ceiling [--ceiling-people N] [--repeat R]

Against Samba, absync writes as fast as Samba adds (about 200-300 adds/s), so
the test bed cannot show what absync itself costs per write. Here the target
is examples/instant_ldap.rs: an LDAPS endpoint that acknowledges every
request at once and stores nothing. It is used only to measure: a sync that
completes against it proves nothing about a sync.

The scenario, on a slapd source of N generated people (tests/testbed/nhsgen.py,
source.sh) with one agreement covering every organisation:
  - `absync sync` into the instant endpoint, from an empty state: the initial
    load, every contact an add. Its rate is adds / the span between the first
    and the last applied `add` record of the journal (state database read
    read-only), so it includes the journal and snapshot commits and leaves out
    process start, the pull before the first add and the end of the run. Wall
    time and peak RSS (/usr/bin/time -v) of the whole run are reported too.
  - `ldapadd -c` of the same adds (absync's own `plan --format ldif`) into the
    same endpoint, one connection, one add at a time: adds / wall time.
  - the ratio of the two rates.
Each repetition runs both with a fresh state; medians and every value are
reported. The endpoint's CPU time during each absync run is reported too, to
show that it is not what limits the rate.

Other scripts call measure(); run as root (source.sh runs slapd, absync needs
ABSYNC_ALLOW_ROOT=1 then), with absync and the instant_ldap example built
(`cargo build --release --bin absync --example instant_ldap`).
"""

import argparse
import datetime
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TB = os.path.join(ROOT, "tests", "testbed")
RELEASE = os.path.join(ROOT, "target", "release")
FILTER = "(&(objectClass=nhsPerson)(!(nhsEntryStatus=leaver)))"
ATTRS = ["givenName", "sn", "cn", "displayName", "mail", "title", "telephoneNumber",
         "mobile", "nhsWorkArea", "nhsJobRole", "employeeNumber", "uid"]
# The instant endpoint's names: the managed OU (the one entry it holds) and
# the account absync binds as (any bind succeeds).
OU = "OU=NHS Directory,DC=sync,DC=test"
BIND_DN = "CN=absync-svc,CN=Users,DC=sync,DC=test"
DEFAULT_PEOPLE = 30000
DEFAULT_ORGS = 50


def log(msg):
    print(f"ceiling: {msg}", file=sys.stderr, flush=True)


def run(cmd, env=None, stdout=subprocess.PIPE, check=True):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(cmd, env=e, stdout=stdout, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return p


def timed(cmd, env=None):
    """Wall time, peak RSS (MB) and the process of a command, through /usr/bin/time -v."""
    t0 = time.monotonic()
    p = run(["/usr/bin/time", "-v"] + cmd, env=env, check=False)
    wall = time.monotonic() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return wall, (int(m.group(1)) / 1024 if m else float("nan")), p


def cpu_of(time_v):
    """User + system CPU seconds from /usr/bin/time -v's report."""
    secs = re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", time_v)
    return sum(float(s) for s in secs) if len(secs) == 2 else float("nan")


def load_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"(\w+)='(.*)'$", line.strip())
            if m:
                env[m.group(1)] = m.group(2)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_secs(pid):
    """User + system CPU time of a process so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Instant:
    """examples/instant_ldap on a free loopback port, with a fresh CA and certificate."""

    def __init__(self, dir, binary):
        tls = os.path.join(dir, "tls")
        run([f"{TB}/tls.sh", tls, "instant", "127.0.0.1", "localhost"])
        self.ca = os.path.join(tls, "ca.pem")
        self.password_file = os.path.join(dir, "bind.pw")
        with open(os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                  "w") as f:
            f.write("any password: the endpoint accepts every bind")
        addr = f"127.0.0.1:{free_port()}"
        self.url = f"ldaps://{addr}"
        self.proc = subprocess.Popen(
            [binary, "--listen", addr, "--cert", f"{tls}/instant.pem", "--key",
             f"{tls}/instant.key", "--entry", OU],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"instant_ldap did not start: {line}{self.proc.stderr.read()}")

    def cpu(self):
        return cpu_secs(self.proc.pid)

    def stop(self):
        """Stops the endpoint; its summary of the requests it answered."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.strip().splitlines()[-1] if err.strip() else ""


class Source:
    """A slapd source: the caller's (a source.env dict), or N generated people of our own."""

    def __init__(self, dir, people, orgs, env=None):
        self.dir, self.own = os.path.join(dir, "source"), env is None
        if env is None:
            ldif = os.path.join(dir, "directory.ldif")
            with open(ldif, "w") as out:
                run(["python3", f"{TB}/nhsgen.py", "directory", "--seed", "1", "--people",
                     str(people), "--orgs", str(orgs)], stdout=out)
            run([f"{TB}/source.sh", "start", self.dir, "--load", ldif])
            env = load_env(f"{self.dir}/source.env")
        self.env = env

    def search(self, *args):
        s = self.env
        return run(["ldapsearch", "-LLL", "-o", "ldif-wrap=no", "-H", s["SOURCE_URL"], "-x",
                    "-D", s["SOURCE_SYNC_DN"], "-y", s["SOURCE_SYNC_PASSWORD_FILE"]] +
                   list(args), env={"LDAPTLS_CACERT": s["SOURCE_CA"]}).stdout

    def organisations(self):
        """Every organisation's ODS code, from the source itself."""
        out = self.search("-b", "ou=Organisations,o=nhs", "-E", "pr=500/noprompt",
                          "(objectClass=nhsOrganisation)", "nhsOdsCode")
        return sorted(set(re.findall(r"^nhsOdsCode: (\S+)", out, re.M)))

    def stop(self):
        if self.own:
            run([f"{TB}/source.sh", "stop", self.dir], check=False)


def write_config(dir, source, instant, orgs):
    """absync.toml and agreements.toml in DIR: the source, the instant endpoint as
    target, one agreement covering ORGS; a fresh state under DIR."""
    os.makedirs(dir, exist_ok=True)
    quoted = ", ".join(f'"{o}"' for o in orgs)
    attrs = ", ".join(f'"{a}"' for a in ATTRS)
    with open(f"{dir}/agreements.toml", "w") as f:
        f.write(f"""[[agreement]]
id = "DSA-CEILING"
title = "Client ceiling benchmark"
organisations = [{quoted}]
attributes = [{attrs}]
valid_from = 2020-01-01
valid_until = 2099-12-31
""")
    s = source.env
    with open(f"{dir}/absync.toml", "w") as f:
        f.write(f"""[source]
url = "{s['SOURCE_URL']}"
bind_dn = "{s['SOURCE_SYNC_DN']}"
password_file = "{s['SOURCE_SYNC_PASSWORD_FILE']}"
ca_file = "{s['SOURCE_CA']}"
base_dn = "ou=People,o=nhs"
filter = "{FILTER}"
page_size = 500

[target]
url = "{instant.url}"
bind_dn = "{BIND_DN}"
password_file = "{instant.password_file}"
ca_file = "{instant.ca}"
base_dn = "{OU}"

[mapping]
file = "{ROOT}/mappings/nhs-to-ad-contact.toml"

[agreements]
file = "agreements.toml"

[state]
dir = "state"

[safety]
# An initial load deletes nothing; a grace period would need a quarantine OU.
delete_grace = "0"
""")
    os.chmod(f"{dir}/absync.toml", 0o640)
    return f"{dir}/absync.toml"


def journal_span(cfg_dir):
    """Applied adds in the journal, and the seconds between the first and the last."""
    con = sqlite3.connect(f"file:{cfg_dir}/state/absync.db?mode=ro", uri=True)
    try:
        n, first, last = con.execute(
            "SELECT count(*), min(at), max(at) FROM journal "
            "WHERE op = 'add' AND outcome = 'applied'").fetchone()
    finally:
        con.close()
    if not n:
        return 0, float("nan")
    at = lambda t: datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ")
    return n, (at(last) - at(first)).total_seconds()


def absync_sync(absync_bin, cfg, instant):
    load = os.getloadavg()[0]
    cpu0 = instant.cpu()
    wall, rss, p = timed([absync_bin, "--config", cfg, "sync"], env={"ABSYNC_ALLOW_ROOT": "1"})
    cpu = instant.cpu() - cpu0
    if p.returncode != 0:
        raise RuntimeError(f"absync sync exited {p.returncode}:\n{p.stderr[-3000:]}")
    adds, span = journal_span(os.path.dirname(cfg))
    return {"adds": adds, "span": span, "rate": adds / span if span > 0 else float("nan"),
            "wall": wall, "rss_mb": rss, "cpu": cpu_of(p.stderr), "endpoint_cpu": cpu,
            "load": load}


def ldapadd(instant, ldif, n):
    t0 = time.monotonic()
    p = run(["ldapadd", "-c", "-H", instant.url, "-x", "-D", BIND_DN, "-y",
             instant.password_file, "-f", ldif], env={"LDAPTLS_CACERT": instant.ca},
            stdout=subprocess.DEVNULL, check=False)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"ldapadd exited {p.returncode}: {p.stderr[-1000:]}")
    return {"wall": wall, "rate": n / wall}


def plan_ldif(absync_bin, dir, source, instant, orgs):
    """absync's own initial-load plan as LDIF (a fresh state); its path and adds."""
    cfg = write_config(f"{dir}/plan", source, instant, orgs)
    path = f"{dir}/adds.ldif"
    with open(path, "w") as out:
        run([absync_bin, "--config", cfg, "plan", "--format", "ldif"],
            env={"ABSYNC_ALLOW_ROOT": "1"}, stdout=out)
    with open(path, encoding="utf-8") as f:
        n = sum(1 for line in f if line.startswith("changetype: add"))
    return path, n


def measure(people=DEFAULT_PEOPLE, dir=None, absync_bin=None, repeat=3, orgs=DEFAULT_ORGS,
            source_env=None, instant_bin=None, keep=False):
    """Runs the client-ceiling scenario and returns its figures.

    people, orgs: the generated directory (ignored with source_env).
    dir: a work directory (default: a fresh one under /tmp, removed unless keep).
    absync_bin, instant_bin: the binaries (default: target/release/...).
    repeat: repetitions; each runs `absync sync` from an empty state and
      `ldapadd -c` of the same adds against the same endpoint.
    source_env: a running test-bed source (its source.env as a dict, e.g. from
      bench/run's Bed.src) instead of starting one; its people under
      ou=People,o=nhs and organisations under ou=Organisations,o=nhs.

    Returns a dict: people, adds, repeat, endpoint (its request counts), and
    for each of "absync_rate", "absync_span", "absync_wall", "absync_rss_mb",
    "absync_cpu", "absync_cpu_us_per_add", "endpoint_cpu", "load" (the
    machine's 1-minute load average as the absync run started), "ldapadd_rate",
    "ldapadd_wall", "ratio" a list with one value per repetition; "median"
    maps each of those keys to its median. Rates are writes per second (adds),
    spans, walls and CPU times seconds; ratio is absync's rate / ldapadd's.
    """
    absync_bin = absync_bin or os.path.join(RELEASE, "absync")
    instant_bin = instant_bin or os.path.join(RELEASE, "examples", "instant_ldap")
    own_dir = dir is None
    dir = dir or tempfile.mkdtemp(prefix="absync-ceiling.")
    os.makedirs(dir, exist_ok=True)
    source = Source(dir, people, orgs, source_env)
    instant = None
    keys = ["absync_rate", "absync_span", "absync_wall", "absync_rss_mb", "absync_cpu",
            "absync_cpu_us_per_add", "endpoint_cpu", "load",
            "ldapadd_rate", "ldapadd_wall", "ratio"]
    out = {k: [] for k in keys}
    try:
        instant = Instant(os.path.join(dir, "instant"), instant_bin)
        codes = source.organisations()
        ldif, n = plan_ldif(absync_bin, dir, source, instant, codes)
        log(f"{len(codes)} organisations, {n} adds; endpoint {instant.url}")
        for r in range(repeat):
            lr = ldapadd(instant, ldif, n)
            cfg = write_config(f"{dir}/run-{r}", source, instant, codes)
            a = absync_sync(absync_bin, cfg, instant)
            if a["adds"] != n:
                raise RuntimeError(f"absync journaled {a['adds']} adds, the plan had {n}")
            for k in ("rate", "span", "wall", "rss_mb", "cpu"):
                out[f"absync_{k}"].append(a[k])
            out["absync_cpu_us_per_add"].append(a["cpu"] / n * 1e6)
            out["endpoint_cpu"].append(a["endpoint_cpu"])
            out["load"].append(a["load"])
            out["ldapadd_rate"].append(lr["rate"])
            out["ldapadd_wall"].append(lr["wall"])
            out["ratio"].append(a["rate"] / lr["rate"])
            log(f"repetition {r + 1}/{repeat}: absync {a['rate']:.0f}/s ({n} adds in "
                f"{a['span']:.2f} s; run {a['wall']:.2f} s, CPU {a['cpu']:.2f} s, "
                f"RSS {a['rss_mb']:.0f} MB, "
                f"endpoint CPU {a['endpoint_cpu']:.2f} s), ldapadd -c {lr['rate']:.0f}/s")
    finally:
        served = instant.stop() if instant else ""
        source.stop()
        if own_dir and not keep:
            shutil.rmtree(dir, ignore_errors=True)
    out.update(people=people if source_env is None else None, adds=n, repeat=repeat,
               endpoint=served)
    out["median"] = {k: statistics.median(out[k]) for k in keys}
    return out


def rows(res):
    """The figures as Markdown table rows: measurement | median | each repetition."""
    def each(key, fmt):
        return ", ".join(fmt.format(v) for v in res[key])
    m = res["median"]
    return [
        (f"absync sync, {res['adds']:,} adds: writes/s over the journal's add span",
         f"**{m['absync_rate']:,.0f}/s**", each("absync_rate", "{:,.0f}")),
        ("absync: add span (first to last applied add record)", f"{m['absync_span']:.2f} s",
         each("absync_span", "{:.2f}")),
        ("absync: whole run, wall", f"{m['absync_wall']:.2f} s", each("absync_wall", "{:.2f}")),
        ("absync: CPU time of the whole run (user + system)", f"{m['absync_cpu']:.2f} s",
         each("absync_cpu", "{:.2f}")),
        ("absync: CPU per add, whole run", f"{m['absync_cpu_us_per_add']:.0f} µs",
         each("absync_cpu_us_per_add", "{:.0f}")),
        ("absync: peak RSS", f"{m['absync_rss_mb']:.0f} MB", each("absync_rss_mb", "{:.0f}")),
        ("endpoint CPU during the absync run", f"{m['endpoint_cpu']:.2f} s",
         each("endpoint_cpu", "{:.2f}")),
        ("machine load average (1 min) as the absync run started", f"{m['load']:.1f}",
         each("load", "{:.1f}")),
        ("`ldapadd -c` of the same adds: adds/s (wall)", f"{m['ldapadd_rate']:,.0f}/s",
         each("ldapadd_rate", "{:,.0f}")),
        ("ratio absync / `ldapadd -c`", f"**{m['ratio']:.2f}×**", each("ratio", "{:.2f}")),
    ]


def print_table(res):
    print(f"\n### client ceiling: {res['adds']:,} adds into the instant endpoint, "
          f"{res['repeat']} repetitions\n")
    print("| measurement | median | each repetition |")
    print("|---|---|---|")
    for r in rows(res):
        print("| " + " | ".join(r) + " |")
    if res.get("endpoint"):
        print(f"\n{res['endpoint']} (all repetitions and the plan)")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=DEFAULT_PEOPLE)
    ap.add_argument("--orgs", type=int, default=DEFAULT_ORGS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", help="work directory (default: a fresh one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="leave the work directory")
    args = ap.parse_args()
    print_table(measure(args.people, args.dir, repeat=args.repeat, orgs=args.orgs,
                        keep=args.keep))


if __name__ == "__main__":
    main()

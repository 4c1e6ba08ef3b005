#!/usr/bin/env bash
# Builds the Debian package, checks it with lintian (no error may be
# reported), installs it on this machine (as root), checks what an admin
# relies on (binary, user, unit, configuration, man pages, completions),
# then purges it and checks that the journal and the user are kept. Run by
# tests/run; needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "package: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (it installs the package)"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
debian/build >/dev/null
deb=$(ls -t target/debian/absync_*.deb | head -1)
# lintian: no error (E:). Warnings are shown, not fatal.
command -v lintian >/dev/null || fail "lintian is not installed (apt-get install lintian)"
lint=$(lintian --tag-display-limit 0 "$deb" 2>&1 | grep -E '^[A-Z]: ' || true)
if echo "$lint" | grep -q '^E:'; then fail "lintian reports errors:
$lint"; fi
[ -z "$lint" ] || echo "package: lintian (no errors): $(echo "$lint" | wc -l) other tags:
$lint"
contents=$(dpkg-deb -c "$deb")
grep -q ' ./usr/share/doc/absync/changelog.Debian.gz$' <<<"$contents" || fail "no changelog.Debian.gz"
grep -q ' ./usr/share/doc/absync/copyright$' <<<"$contents" || fail "no copyright file"
echo "package: installing $deb"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 install -y -q "./$deb" >/dev/null

/usr/bin/absync --version | grep -q '^absync ' || fail "absync --version"
# Stripped: the debug symbols stay in the build tree (tens of MB).
size=$(stat -c %s /usr/bin/absync)
[ "$size" -lt 30000000 ] || fail "/usr/bin/absync is $size bytes: not stripped"
getent passwd absync >/dev/null || fail "no system user absync"
unit=$(ls /lib/systemd/system/absync.service /usr/lib/systemd/system/absync.service 2>/dev/null | head -1)
[ -n "$unit" ] || fail "no absync.service installed"
mode() { stat -c '%U:%G %a' "$1"; }
[ "$(mode /etc/absync)" = "root:absync 750" ] || fail "/etc/absync is $(mode /etc/absync)"
[ "$(mode /etc/absync/absync.toml)" = "root:absync 640" ] \
  || fail "/etc/absync/absync.toml is $(mode /etc/absync/absync.toml)"
# The state directory is systemd's (StateDirectory=), not the package's.
grep -qx 'StateDirectory=absync' "$unit" || fail "the unit has no StateDirectory=absync"
grep -qx 'User=absync' "$unit" || fail "the unit does not run as absync"
grep -qx 'LimitCORE=0' "$unit" || fail "the unit allows core dumps (no LimitCORE=0)"
# A daemon that cannot start (exit 2: a broken configuration) is not
# restarted every 30 s forever.
grep -qx 'RestartPreventExitStatus=2' "$unit" || fail "the unit restarts a daemon that exits 2"
[ "$(mode /etc/absync/certs)" = "root:root 755" ] || fail "/etc/absync/certs is $(mode /etc/absync/certs)"
grep -q '^LoadCredential=source.pw:/etc/absync/source.pw$' "$unit" || fail "no LoadCredential for source.pw"
# The shipped configuration points the CLI at the service's control socket.
grep -q '^socket = "/run/absync/absync.sock"' /etc/absync/absync.toml \
  || fail "the shipped configuration does not name /run/absync/absync.sock"
# The admin's files keep the owners and modes the admin gave them when the
# package is configured again (reinstall, upgrade): a bind password stays
# root's alone, and a file of the admin's own is not chmodded (no
# recursive chmod of /etc/absync); the package's own files keep theirs
# (dpkg-statoverride), for the service to read.
install -m 0600 -o root -g root /dev/null /etc/absync/source.pw
echo not-a-real-password > /etc/absync/source.pw
install -m 0600 -o root -g root /dev/null /etc/absync/site-notes.toml
install -m 0644 -o root -g root /dev/null /etc/absync/certs/extra-ca.pem
apt-get -o DPkg::Lock::Timeout=600 install --reinstall -y -q "./$deb" >/dev/null
[ "$(mode /etc/absync/source.pw)" = "root:root 600" ] \
  || fail "/etc/absync/source.pw is $(mode /etc/absync/source.pw) after a reinstall"
[ "$(mode /etc/absync/site-notes.toml)" = "root:root 600" ] \
  || fail "the admin's /etc/absync/site-notes.toml is $(mode /etc/absync/site-notes.toml) after a reinstall"
[ "$(mode /etc/absync/certs/extra-ca.pem)" = "root:root 644" ] \
  || fail "the admin's CA file is $(mode /etc/absync/certs/extra-ca.pem) after a reinstall"
for f in /etc/absync/absync.toml /etc/absync/agreements.toml /etc/absync/mappings/nhs-to-ad-contact.toml; do
  [ "$(mode "$f")" = "root:absync 640" ] || fail "$f is $(mode "$f") after a reinstall"
done
[ "$(mode /etc/absync)" = "root:absync 750" ] || fail "/etc/absync is $(mode /etc/absync) after a reinstall"
rm -f /etc/absync/source.pw /etc/absync/site-notes.toml /etc/absync/certs/extra-ca.pem
for f in /etc/absync/agreements.toml /etc/absync/mappings/nhs-to-ad-contact.toml \
         /usr/share/man/man1/absync.1.gz /usr/share/man/man1/absync-sync.1.gz \
         /usr/share/man/man5/absync.toml.5.gz \
         /usr/share/bash-completion/completions/absync \
         /usr/share/zsh/vendor-completions/_absync \
         /usr/share/fish/vendor_completions.d/absync.fish \
         /usr/share/doc/absync/README.md /usr/share/doc/absync/changelog.Debian.gz \
         /usr/share/doc/absync/copyright; do
  [ -f "$f" ] || fail "missing $f"
done
# The pages an admin asks for, found by man itself, with what they need.
page=$(MANWIDTH=80 man -P cat absync-sync 2>&1) || fail "man absync-sync: $page"
for s in 'EXIT STATUS' ENVIRONMENT FILES '--allow-deletes'; do
  echo "$page" | grep -q -- "$s" || fail "man absync-sync has no $s"
done
page=$(MANWIDTH=80 man -P cat 5 absync.toml 2>&1) || fail "man 5 absync.toml: $page"
echo "$page" | grep -q 'quarantine_ou' || fail "man 5 absync.toml does not describe quarantine_ou"
page=$(MANWIDTH=80 man -P cat absync 2>&1) || fail "man absync: $page"
echo "$page" | grep -q 'absync-journal(1)' || fail "man absync does not list absync-journal(1)"
bash -c '. /usr/share/bash-completion/completions/absync && complete -p absync' >/dev/null \
  || fail "the bash completion does not load"
dpkg-query -W -f='${Conffiles}\n' absync | grep -q /etc/absync/absync.toml || fail "config is not a conffile"
out=$(systemd-analyze verify --man=no "$unit" 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify: $out"
score=$(systemd-analyze security --offline=true --no-pager "$unit" | sed -n 's/.*exposure level for absync.service: \([0-9.]*\).*/\1/p')
python3 -c "import sys; sys.exit(0 if float('$score') <= 2.0 else 1)" || fail "exposure $score > 2.0"
# The shipped configuration parses; it only lacks this site's servers.
msg=$(/usr/bin/absync --config /etc/absync/absync.toml check 2>&1 || true)
echo "$msg" | grep -q 'source.ca_file' || fail "unexpected check output: $msg"

# The installed service as an admin meets it: the daemon runs as the
# service user with its passwords handed over as systemd does
# (CREDENTIALS_DIRECTORY), a run stops at the deletion threshold, and an
# admin in the absync group (not root) releases it with
# `absync resync --allow-deletes`. Against the test bed tests/run brings up.
[ -n "${ABSYNC_TESTBED:-}" ] || fail "needs a test bed: ABSYNC_TESTBED (tests/run sets it)"
tbenv="$ABSYNC_TESTBED"; [ -d "$tbenv" ] && tbenv="$tbenv/testbed.env"
# shellcheck disable=SC1090
. "$tbenv"
base="ou=absync-pkg-$$,$SOURCE_BASE_DN"
python3 tests/testbed/nhsgen.py directory --emit-base --base "$base" --seed 81 --people 30 --orgs 2 \
  | ldapmodify -a -H "$SOURCE_LDAP_URL" -x -D "$SOURCE_ADMIN_DN" -y "$SOURCE_ADMIN_PASSWORD_FILE" >/dev/null
ou="OU=absync-pkg-$$,$TARGET_OU"
printf 'dn: %s\nobjectClass: organizationalUnit\n\n' "$ou" \
  | LDAPTLS_CACERT="$TARGET_CA" ldapmodify -a -H "$TARGET_URL" -x -D "$TARGET_ADMIN_DN" \
      -y "$TARGET_ADMIN_PASSWORD_FILE" >/dev/null
mapfile -t orgs < <(python3 tests/testbed/nhsgen.py orgs --seed 81 --orgs 2 | cut -f1)
agreements() { # the organisations the agreement covers, as a TOML list
  printf '[[agreement]]\nid = "DSA-PKG"\ntitle = "package test"\norganisations = %s\nattributes = ["givenName", "sn", "cn", "displayName", "mail"]\nvalid_from = 2020-01-01\nvalid_until = 2099-12-31\n' "$1" \
    > /etc/absync/agreements.toml
}
agreements "[\"${orgs[0]}\", \"${orgs[1]}\"]"
install -d -m 0755 /etc/absync/certs
install -m 0644 "$SOURCE_CA" /etc/absync/certs/source-ca.pem
install -m 0644 "$TARGET_CA" /etc/absync/certs/ad-ca.pem
cp -p /etc/absync/absync.toml /etc/absync/absync.toml.shipped
cat > /etc/absync/absync.toml <<TOML
[source]
url = "$SOURCE_URL"
bind_dn = "$SOURCE_SYNC_DN"
password_credential = "source.pw"
ca_file = "/etc/absync/certs/source-ca.pem"
base_dn = "ou=People,$base"
filter = "(&(objectClass=nhsPerson)(!(nhsEntryStatus=leaver)))"
org_attribute = "nhsOdsCode"
anchor_attribute = "entryUUID"
[target]
url = "$TARGET_URL"
bind_dn = "$TARGET_SVC_DN"
password_credential = "target.pw"
ca_file = "/etc/absync/certs/ad-ca.pem"
base_dn = "$ou"
anchor_attribute = "adminDescription"
[mapping]
file = "/etc/absync/mappings/nhs-to-ad-contact.toml"
[agreements]
file = "/etc/absync/agreements.toml"
[state]
dir = "/var/lib/absync"
[safety]
max_deletes = 1
max_delete_percent = 100
delete_grace = "0"
[schedule]
interval = "1h"
[daemon]
socket = "/run/absync/absync.sock"
TOML
chown root:absync /etc/absync/absync.toml /etc/absync/agreements.toml
chmod 0640 /etc/absync/absync.toml /etc/absync/agreements.toml
# What systemd sets up for the unit: its state and runtime directories, and
# the credentials (copies of the root-only password files, for absync only).
install -d -o absync -g absync -m 0700 /var/lib/absync
install -d -o absync -g absync -m 0750 /run/absync
creds=$(mktemp -d /run/absync-creds.XXXXXX)
install -m 0400 -o absync -g absync "$SOURCE_SYNC_PASSWORD_FILE" "$creds/source.pw"
install -m 0400 -o absync -g absync "$TARGET_SVC_PASSWORD_FILE" "$creds/target.pw"
chown absync:absync "$creds"; chmod 0500 "$creds"
admin=absync-pkg-admin
useradd -M -N -g nogroup -G absync -s /usr/sbin/nologin "$admin"
cleanup() {
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  userdel "$admin" 2>/dev/null || true
  rm -rf "$creds" /var/lib/absync /run/absync /etc/absync/certs/source-ca.pem /etc/absync/certs/ad-ca.pem
  rm -f "${log:-}"
  [ -f /etc/absync/absync.toml.shipped ] && mv /etc/absync/absync.toml.shipped /etc/absync/absync.toml
  true
}
trap cleanup EXIT
as_admin() { setpriv --reuid="$admin" --regid=nogroup --init-groups -- /usr/bin/absync "$@"; }
log=$(mktemp /tmp/absync-pkg-daemon.XXXXXX.log)
env -u ABSYNC_ALLOW_ROOT CREDENTIALS_DIRECTORY="$creds" \
  setpriv --reuid=absync --regid=absync --init-groups -- \
  /usr/bin/absync --config /etc/absync/absync.toml run 2>"$log" &
daemon=$!
for _ in $(seq 300); do
  as_admin --config /etc/absync/absync.toml resync >/dev/null 2>&1 && break
  kill -0 "$daemon" 2>/dev/null || fail "the daemon stopped: $(cat "$log")"
  sleep 0.2
done
[ "$(stat -c '%U:%G %a' /run/absync/absync.sock)" = "absync:absync 660" ] \
  || fail "the socket is $(stat -c '%U:%G %a' /run/absync/absync.sock)"
# An organisation leaves the agreement: its deletes stop at the threshold.
agreements "[\"${orgs[0]}\"]"
set +e
out=$(as_admin --config /etc/absync/absync.toml resync 2>&1); code=$?
set -e
[ "$code" = 3 ] || fail "resync after the agreement shrank: exit $code: $out; log: $(cat "$log")"
out=$(as_admin --config /etc/absync/absync.toml sync --allow-deletes 100 2>&1) && fail "sync ran beside the daemon"
echo "$out" | grep -qF 'ask it with `absync resync --allow-deletes 100`' || fail "sync beside the daemon: $out"
out=$(as_admin --config /etc/absync/absync.toml status 2>&1) && fail "status read the state as $admin"
echo "$out" | grep -q 'permission denied reading /var/lib/absync' || fail "status as $admin: $out"
set +e
check=$(/usr/bin/absync --config /etc/absync/absync.toml status --check); code=$?
set -e
[ "$code" = 2 ] && echo "$check" | grep -q '^ABSYNC CRITICAL - stopped: deletion threshold' \
  || fail "status --check while held: exit $code: $check"
out=$(as_admin --config /etc/absync/absync.toml resync --allow-deletes 100 2>&1) \
  || fail "resync --allow-deletes as $admin: $out; log: $(cat "$log")"
echo "$out" | grep -q 'held back 0' || fail "deletes still held: $out"
/usr/bin/absync journal --state /var/lib/absync export --format jsonl \
  | grep '"op":"override"' | grep -q "allow-deletes 100 by $admin" \
  || fail "no override by $admin in the journal"
/usr/bin/absync --config /etc/absync/absync.toml status --check | grep -q '^ABSYNC OK' \
  || fail "status --check after the release: $(/usr/bin/absync --config /etc/absync/absync.toml status --check)"
# Keep the journal this run wrote, for the purge below.
kill "$daemon"; wait "$daemon" 2>/dev/null || true; daemon=
keep=$(mktemp -d /tmp/absync-pkg-state.XXXXXX)
cp -a /var/lib/absync/. "$keep/"
cleanup; trap 'rm -rf "$keep"' EXIT
echo "package: the daemon ran as absync with CREDENTIALS_DIRECTORY; $admin released held deletes with resync"

# Purge keeps the evidence: the state directory with its journal, and the
# system user that owns it; it says where the journal is.
install -d -o absync -g absync -m 0700 /var/lib/absync
cp -a "$keep/." /var/lib/absync/
trap 'rm -rf "$keep" /var/lib/absync; userdel absync 2>/dev/null || true' EXIT
before=$(sha256sum /var/lib/absync/absync.db | cut -d' ' -f1)
out=$(apt-get -o DPkg::Lock::Timeout=600 purge -y -q absync 2>&1) || fail "purge: $out"
[ ! -e /usr/bin/absync ] || fail "/usr/bin/absync left after purge"
echo "$out" | grep -q 'The journal is kept in /var/lib/absync/absync.db' \
  || fail "purge does not say where the journal is: $out"
getent passwd absync >/dev/null || fail "purge removed the system user absync"
[ "$(stat -c '%U:%G %a' /var/lib/absync)" = "absync:absync 700" ] \
  || fail "/var/lib/absync after purge: $(stat -c '%U:%G %a' /var/lib/absync 2>&1)"
[ "$(sha256sum /var/lib/absync/absync.db | cut -d' ' -f1)" = "$before" ] \
  || fail "purge changed the journal"
! dpkg-statoverride --list | grep -q ' /etc/absync' || fail "statoverrides left after purge"
# Installed again over the kept state: the journal is still intact.
apt-get -o DPkg::Lock::Timeout=600 install -y -q "./$deb" >/dev/null
out=$(/usr/bin/absync journal --state /var/lib/absync verify 2>&1) \
  || fail "journal verify after purge and reinstall: $out"
echo "$out" | grep -q intact || fail "journal verify after purge and reinstall: $out"
apt-get -o DPkg::Lock::Timeout=600 purge -y -q absync >/dev/null
rm -rf /var/lib/absync "$keep"
userdel absync 2>/dev/null || true
echo "package: ok ($deb: lintian clean of errors, installed, checked, purged keeping the journal; unit exposure $score)"

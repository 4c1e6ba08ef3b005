#!/usr/bin/env bash
# Builds the Debian package, installs it on this machine (as root), checks
# what an admin relies on (binary, user, unit, configuration, man page),
# then purges it. Run by tests/run; needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "package: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (it installs the package)"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
debian/build >/dev/null
deb=$(ls -t target/debian/absync_*.deb | head -1)
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
grep -q '^LoadCredential=source.pw:/etc/absync/source.pw$' "$unit" || fail "no LoadCredential for source.pw"
# The shipped configuration points the CLI at the service's control socket.
grep -q '^socket = "/run/absync/absync.sock"' /etc/absync/absync.toml \
  || fail "the shipped configuration does not name /run/absync/absync.sock"
# A bind password the admin put in place stays root's alone when the
# package is configured again (reinstall, upgrade).
install -m 0600 -o root -g root /dev/null /etc/absync/source.pw
echo not-a-real-password > /etc/absync/source.pw
apt-get -o DPkg::Lock::Timeout=600 install --reinstall -y -q "./$deb" >/dev/null
[ "$(mode /etc/absync/source.pw)" = "root:root 600" ] \
  || fail "/etc/absync/source.pw is $(mode /etc/absync/source.pw) after a reinstall"
[ "$(mode /etc/absync/absync.toml)" = "root:absync 640" ] \
  || fail "/etc/absync/absync.toml is $(mode /etc/absync/absync.toml) after a reinstall"
rm -f /etc/absync/source.pw
for f in /etc/absync/agreements.toml /etc/absync/mappings/nhs-to-ad-contact.toml \
         /usr/share/man/man1/absync.1.gz /usr/share/bash-completion/completions/absync \
         /usr/share/doc/absync/README.md; do
  [ -f "$f" ] || fail "missing $f"
done
dpkg-query -W -f='${Conffiles}\n' absync | grep -q /etc/absync/absync.toml || fail "config is not a conffile"
out=$(systemd-analyze verify --man=no "$unit" 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify: $out"
score=$(systemd-analyze security --offline=true --no-pager "$unit" | sed -n 's/.*exposure level for absync.service: \([0-9.]*\).*/\1/p')
python3 -c "import sys; sys.exit(0 if float('$score') <= 2.0 else 1)" || fail "exposure $score > 2.0"
# The shipped configuration parses; it only lacks this site's servers.
msg=$(/usr/bin/absync --config /etc/absync/absync.toml check 2>&1 || true)
echo "$msg" | grep -q 'source.ca_file' || fail "unexpected check output: $msg"

apt-get -o DPkg::Lock::Timeout=600 purge -y -q absync >/dev/null
! getent passwd absync >/dev/null || fail "user absync left after purge"
[ ! -e /usr/bin/absync ] || fail "/usr/bin/absync left after purge"
echo "package: ok ($deb: installed, checked, purged; unit exposure $score)"

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
getent passwd absync >/dev/null || fail "no system user absync"
unit=$(ls /lib/systemd/system/absync.service /usr/lib/systemd/system/absync.service 2>/dev/null | head -1)
[ -n "$unit" ] || fail "no absync.service installed"
[ "$(stat -c '%U:%G %a' /etc/absync/absync.toml)" = "root:absync 640" ] \
  || fail "/etc/absync/absync.toml is $(stat -c '%U:%G %a' /etc/absync/absync.toml)"
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

#!/usr/bin/env bash
# Installs what the test bed needs from Debian's packages, non-interactively,
# without leaving a system slapd or samba service configured or running.
# Idempotent: installs only what is missing. Run as root.
set -euo pipefail

# chromium and fonts-dejavu-core: the report test looks at `journal report`'s
# page in headless Chromium. lintian and man-db: the package test
# (tests/package.sh) checks the .deb and its manual pages. libnss-wrapper and
# libresolv-wrapper: name resolution between the two DCs of up.sh --replicas.
PKGS=(slapd ldap-utils samba samba-ad-dc samba-ad-provision samba-dsdb-modules
      samba-vfs-modules winbind ldb-tools openssl python3 time procps iproute2
      chromium fonts-dejavu-core lintian man-db libnss-wrapper libresolv-wrapper)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "testbed: all packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "testbed: missing packages (${missing[*]}); run this script as root" >&2
  exit 1
fi

echo "testbed: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# slapd must not configure a system instance: the test bed runs its own.
echo 'slapd slapd/no_configuration boolean true' | debconf-set-selections
mkdir -p /etc/ldap && touch /etc/ldap/noslapd
# Deny service starts while packages install (invoke-rc.d honours policy-rc.d).
policy=/usr/sbin/policy-rc.d
had_policy=0
if [ -e "$policy" ]; then had_policy=1; cp -p "$policy" "$policy.absync-bak"; fi
printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"
restore_policy() {
  if [ "$had_policy" = 1 ]; then mv -f "$policy.absync-bak" "$policy"; else rm -f "$policy"; fi
}
trap restore_policy EXIT

# Wait for the dpkg lock (a fresh machine may run its own apt jobs at boot)
# and retry downloads, rather than failing on the first hiccup.
apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=5)
for i in 1 2 3; do apt-get "${apt_opts[@]}" update -q && break; sleep $((i * 10)); done
apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}"

# Belt and braces: no distribution daemon may hold the LDAP ports.
for svc in slapd samba-ad-dc smbd nmbd winbind; do
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
# Only the distribution's own instance (its pid file), never a test bed's.
if [ -s /run/slapd/slapd.pid ]; then
  kill "$(cat /run/slapd/slapd.pid)" 2>/dev/null || true
fi
echo "testbed: packages installed"

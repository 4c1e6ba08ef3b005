#!/usr/bin/env bash
# The README's first command: on a fresh Debian 12 machine (as root), installs
# the servers, builds absync, brings up a demo NHS Directory (slapd, 2,000
# generated people over 20 organisations) and a demo Active Directory (Samba),
# writes an agreement and a config, runs a real sync, and shows what landed.
#
#   tests/testbed/demo.sh [DIR]      (default /tmp/absync-demo)
#
# The servers keep running afterwards so you can try absync by hand; stop
# them with tests/testbed/down.sh DIR/bed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dir=${1:-/tmp/absync-demo}

"$here/install.sh"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
(cd "$root" && cargo build --quiet)
absync="$root/target/debug/absync"

# A previous demo in the same place is stopped and replaced.
if [ -f "$dir/.absync-demo" ]; then "$here/down.sh" "$dir/bed" >/dev/null 2>&1 || true; rm -rf "$dir"; fi
if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
  echo "demo: $dir exists and is not an earlier demo; choose another directory" >&2; exit 1
fi
mkdir -p "$dir"; dir=$(cd "$dir" && pwd); touch "$dir/.absync-demo"

"$here/up.sh" "$dir/bed" --people 2000 --orgs 20 --seed 1
set -a; . "$dir/bed/testbed.env"; set +a

# The agreement: the first eight open organisations, the usual directory
# attributes, in force from a year ago to a year ahead.
orgs=$(awk -F'\t' '$2 == "open" { printf "%s\"%s\"", (n++ ? ", " : ""), $1 } n == 8 { exit }' \
  "$dir/bed/data/organisations.tsv")
from=$(date -u -d '-1 year' +%F); until=$(date -u -d '+1 year' +%F)
cat > "$dir/agreements.toml" <<TOML
[[agreement]]
id = "DSA-DEMO-001"
title = "Demo: staff directory for the county council"
organisations = [$orgs]
attributes = ["givenName", "sn", "cn", "displayName", "mail", "title", "telephoneNumber",
              "mobile", "nhsWorkArea", "nhsJobRole", "employeeNumber"]
valid_from = $from
valid_until = $until
TOML

cat > "$dir/absync.toml" <<TOML
[source]
url = "$SOURCE_URL"
bind_dn = "$SOURCE_SYNC_DN"
password_file = "$SOURCE_SYNC_PASSWORD_FILE"
ca_file = "$SOURCE_CA"
base_dn = "ou=People,o=nhs"
filter = "(&(objectClass=nhsPerson)(!(nhsEntryStatus=leaver)))"
org_attribute = "nhsOdsCode"
anchor_attribute = "entryUUID"
page_size = 500

[target]
url = "$TARGET_URL"
bind_dn = "$TARGET_SVC_DN"
password_file = "$TARGET_SVC_PASSWORD_FILE"
ca_file = "$TARGET_CA"
base_dn = "$TARGET_OU"
anchor_attribute = "adminDescription"

[mapping]
file = "$root/mappings/nhs-to-ad-contact.toml"

[agreements]
file = "agreements.toml"

[state]
dir = "state"

[safety]
max_deletes = 500
max_delete_percent = 10
delete_grace = "7d"
quarantine_ou = "$TARGET_QUARANTINE_OU"
TOML

# The config names the servers and accounts: readable by its owner only.
chmod 600 "$dir/absync.toml" "$dir/agreements.toml"

# The demo runs as root (it installs packages and runs Samba); absync
# refuses root unless told, as a real installation runs it as "absync".
export ABSYNC_ALLOW_ROOT=1
echo; echo "== absync check"; "$absync" --config "$dir/absync.toml" check
echo; echo "== absync sync"; "$absync" --config "$dir/absync.toml" sync
echo; echo "== what landed in Active Directory (independent ldapsearch as the service account)"
export LDAPTLS_CACERT="$TARGET_CA"
n=$(ldapsearch -LLL -H "$TARGET_URL" -x -D "$TARGET_SVC_DN" -y "$TARGET_SVC_PASSWORD_FILE" \
     -b "$TARGET_OU" -s one -E pr=500/noprompt '(objectClass=contact)' dn | grep -c '^dn')
echo "$n contacts in $TARGET_OU; three of them:"
ldapsearch -LLL -o ldif-wrap=no -H "$TARGET_URL" -x -D "$TARGET_SVC_DN" -y "$TARGET_SVC_PASSWORD_FILE" \
  -b "$TARGET_OU" -s one '(objectClass=contact)' cn mail title telephoneNumber company adminDescription \
  | awk 'BEGIN { RS = ""; ORS = "\n\n" } NR <= 3'
echo "== a second sync has nothing to do"; "$absync" --config "$dir/absync.toml" sync
cat <<TXT

Demo ready in $dir:
  config     $dir/absync.toml   (agreements $dir/agreements.toml)
  try        $absync --config $dir/absync.toml plan
             ABSYNC_ALLOW_ROOT=1 $absync --config $dir/absync.toml sync   (as root, absync needs to be told)
  stop with  $here/down.sh $dir/bed
TXT

#!/usr/bin/env bash
# Brings up the whole test bed in a fresh directory: the source (slapd) and the
# target (Samba AD), each with its own CA, and optionally a generated directory.
#
#   up.sh DIR [--people N] [--orgs M] [--seed S] [--exchange-schema]
#             [--ip 127.0.0.N] [--owner-pid PID] [--remove-when-done]
#
#   --people N        generate N people (over M organisations, seed S) under
#                     o=nhs and bulk-load them with slapadd before slapd starts
#   --exchange-schema extend Samba's schema with mailNickname, targetAddress,
#                     msExchHideFromAddressLists
#   --owner-pid PID   stop the test bed when process PID exits (test harnesses)
#   --remove-when-done  with --owner-pid: also delete DIR afterwards
#
# Writes DIR/testbed.env (KEY='value' lines, see source.sh and target.sh) and
# prints where the CA files are. Stop with down.sh DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "testbed: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: up.sh DIR [options]"
dir=$1; shift
people=0 orgs=20 seed=1 exchange=() ip=() owner='' remove=0
while [ $# -gt 0 ]; do
  case $1 in
    --people) people=$2; shift 2 ;;
    --orgs) orgs=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --exchange-schema) exchange=(--exchange-schema); shift ;;
    --ip) ip=(--ip "$2"); shift 2 ;;
    --owner-pid) owner=$2; shift 2 ;;
    --remove-when-done) remove=1; shift ;;
    *) die "unknown option $1" ;;
  esac
done
if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
  die "$dir is not empty; every start needs a fresh directory"
fi
mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
t0=$(date +%s.%N)

# If anything below fails, stop what was started: no stray daemons.
trap '"$here/down.sh" "$dir" >/dev/null 2>&1 || true' ERR

loads=()
if [ "$people" -gt 0 ]; then
  mkdir -p "$dir/data"
  python3 "$here/nhsgen.py" directory --seed "$seed" --people "$people" --orgs "$orgs" \
    --base o=nhs > "$dir/data/directory.ldif"
  python3 "$here/nhsgen.py" orgs --seed "$seed" --orgs "$orgs" > "$dir/data/organisations.tsv"
  loads=(--load "$dir/data/directory.ldif")
  echo "testbed: generated $people people over $orgs organisations (seed $seed)"
fi

"$here/source.sh" start "$dir/source" ${loads[@]+"${loads[@]}"}
"$here/target.sh" start "$dir/target" ${ip[@]+"${ip[@]}"} ${exchange[@]+"${exchange[@]}"}
cat "$dir/source/source.env" "$dir/target/target.env" > "$dir/testbed.env"
{
  echo "TESTBED_DIR='$dir'"
  echo "TESTBED_PEOPLE='$people'"
  echo "TESTBED_ORGS='$orgs'"
  echo "TESTBED_SEED='$seed'"
} >> "$dir/testbed.env"
trap - ERR

if [ -n "$owner" ]; then
  # A reaper outlives this script and stops the servers once the owner exits,
  # even if the owner was killed with SIGKILL.
  # It stops the servers by their PIDs itself, so it works even if this
  # checkout is gone by then.
  setsid bash -c '
    while kill -0 "$1" 2>/dev/null; do sleep 1; done
    dir=$2
    slapd=$(cat "$dir/source/slapd.pid" 2>/dev/null)
    samba=$(tr -dc 0-9 < "$dir/target/samba/run/samba.pid" 2>/dev/null)
    [ -n "$slapd" ] && kill -TERM "$slapd" 2>/dev/null
    [ -n "$samba" ] && kill -TERM -- "-$samba" 2>/dev/null
    for _ in $(seq 50); do
      { [ -n "$slapd" ] && kill -0 "$slapd" 2>/dev/null; } || \
        { [ -n "$samba" ] && kill -0 "$samba" 2>/dev/null; } || break
      sleep 0.2
    done
    [ -n "$slapd" ] && kill -KILL "$slapd" 2>/dev/null
    [ -n "$samba" ] && kill -KILL -- "-$samba" 2>/dev/null
    if [ "$3" = 1 ]; then rm -rf "$dir"; fi
  ' reaper "$owner" "$dir" "$remove" </dev/null >/dev/null 2>&1 &
fi

t1=$(date +%s.%N)
printf 'testbed: up in %s s; environment in %s\n' \
  "$(python3 -c "print(round($t1 - $t0, 1))")" "$dir/testbed.env"
echo "testbed: source CA $dir/source/tls/ca.pem"
echo "testbed: target CA $dir/target/tls/ca.pem"

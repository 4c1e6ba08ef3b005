#!/usr/bin/env bash
# Brings up the whole test bed in a fresh directory: the source (slapd) and the
# target (Samba AD), each with its own CA, and optionally a generated directory.
#
#   up.sh DIR [--people N] [--orgs M] [--seed S] [--exchange-schema]
#             [--ip 127.0.0.N] [--replicas] [--owner-pid PID] [--remove-when-done]
#
#   --people N        generate N people (over M organisations, seed S) under
#                     o=nhs and bulk-load them with slapadd before slapd starts
#   --exchange-schema extend Samba's schema with mailNickname, targetAddress,
#                     msExchHideFromAddressLists
#   --replicas        two servers on each side: a second slapd (DIR/source2)
#                     in multi-provider replication with the first, and a
#                     second Samba DC (dc2.sync.test, DIR/target2) joined to
#                     the same domain; both replicate both ways. testbed.env
#                     then also has SOURCE2_* and TARGET2_* keys and
#                     TESTBED_REPLICAS='1'. server.sh DIR kills, stops,
#                     starts, partitions and heals them.
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
people=0 orgs=20 seed=1 exchange=() ip=() owner='' remove=0 replicas=0
while [ $# -gt 0 ]; do
  case $1 in
    --people) people=$2; shift 2 ;;
    --orgs) orgs=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --exchange-schema) exchange=(--exchange-schema); shift ;;
    --ip) ip=(--ip "$2"); shift 2 ;;
    --replicas) replicas=1; shift ;;
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

# If anything below fails, stop what was started: no stray daemons (once a
# start still running in the background has ended).
trap 'wait; "$here/down.sh" "$dir" >/dev/null 2>&1 || true' ERR

loads=()
if [ "$people" -gt 0 ]; then
  mkdir -p "$dir/data"
  python3 "$here/nhsgen.py" directory --seed "$seed" --people "$people" --orgs "$orgs" \
    --base o=nhs > "$dir/data/directory.ldif"
  python3 "$here/nhsgen.py" orgs --seed "$seed" --orgs "$orgs" > "$dir/data/organisations.tsv"
  loads=(--load "$dir/data/directory.ldif")
  echo "testbed: generated $people people over $orgs organisations (seed $seed)"
fi

if [ "$replicas" = 1 ]; then
  # The sources start alongside the DCs (its output follows theirs).
  "$here/source.sh" start "$dir/source" --replica "$dir/source2" ${loads[@]+"${loads[@]}"} \
    >"$dir/up-source.log" 2>&1 &
  source_job=$!
  "$here/target.sh" start "$dir/target" --replicas ${ip[@]+"${ip[@]}"} ${exchange[@]+"${exchange[@]}"}
  "$here/target.sh" join "$dir/target2" "$dir/target"
  wait "$source_job" || { cat "$dir/up-source.log" >&2; false; }
  cat "$dir/up-source.log"
else
  "$here/source.sh" start "$dir/source" ${loads[@]+"${loads[@]}"}
  "$here/target.sh" start "$dir/target" ${ip[@]+"${ip[@]}"} ${exchange[@]+"${exchange[@]}"}
fi
cat "$dir/source/source.env" "$dir/target/target.env" > "$dir/testbed.env"
{
  echo "TESTBED_DIR='$dir'"
  echo "TESTBED_PEOPLE='$people'"
  echo "TESTBED_ORGS='$orgs'"
  echo "TESTBED_SEED='$seed'"
  if [ "$replicas" = 1 ]; then echo "TESTBED_REPLICAS='1'"; fi
} >> "$dir/testbed.env"
trap - ERR

if [ -n "$owner" ]; then
  # A reaper outlives this script and stops the servers once the owner exits,
  # even if the owner was killed with SIGKILL.
  # It stops the servers by their PIDs itself, so it works even if this
  # checkout is gone by then. It reads the pid files only then, so servers
  # restarted meanwhile (server.sh) are the ones it stops. With --replicas
  # there are two of each (source2, target2).
  setsid bash -c '
    while kill -0 "$1" 2>/dev/null; do sleep 1; done
    dir=$2
    # slapd by PID; Samba by process group (its root process leads it).
    pids=()
    for f in "$dir"/source/slapd.pid "$dir"/source2/slapd.pid; do
      p=$(tr -dc 0-9 < "$f" 2>/dev/null) && [ -n "$p" ] && pids+=("$p")
    done
    for f in "$dir"/target/samba/run/samba.pid "$dir"/target2/samba/run/samba.pid; do
      p=$(tr -dc 0-9 < "$f" 2>/dev/null) && [ -n "$p" ] && pids+=("-$p")
    done
    [ ${#pids[@]} -gt 0 ] && kill -TERM -- "${pids[@]}" 2>/dev/null
    for _ in $(seq 50); do
      alive=0
      for p in "${pids[@]}"; do kill -0 -- "$p" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.2
    done
    [ ${#pids[@]} -gt 0 ] && kill -KILL -- "${pids[@]}" 2>/dev/null
    if [ "$3" = 1 ]; then rm -rf "$dir"; fi
  ' reaper "$owner" "$dir" "$remove" </dev/null >/dev/null 2>&1 &
fi

t1=$(date +%s.%N)
printf 'testbed: up in %s s; environment in %s\n' \
  "$(python3 -c "print(round($t1 - $t0, 1))")" "$dir/testbed.env"
echo "testbed: source CA $dir/source/tls/ca.pem"
echo "testbed: target CA $dir/target/tls/ca.pem"
if [ "$replicas" = 1 ]; then
  echo "testbed: replicas: source2 $dir/source2, dc2 $dir/target2 (tests/testbed/server.sh $dir ...)"
fi

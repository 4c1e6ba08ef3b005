#!/usr/bin/env bash
# Controls one server of a test bed started by up.sh, for failover tests.
#
#   server.sh DIR ACTION SERVER
#
# SERVER is source1 or source2 (slapd; DIR/source, DIR/source2) or dc1 or dc2
# (Samba; DIR/target, DIR/target2). source2 and dc2 exist only in a test
# bed brought up with up.sh --replicas. ACTION is one of:
#
#   kill       SIGKILL to the server: Samba's whole process group, slapd's
#              process. Its pid file and data stay, as after a crash.
#   stop       an orderly stop (SIGTERM, then SIGKILL after 10 s).
#   start      starts the same instance again on its own address, ports and
#              data, and waits until LDAPS answers; nothing to do if it
#              already answers. Works after kill (stale pid files).
#   status     exit 0 if the server runs and answers LDAPS, 1 if not.
#   partition  the two DCs stop replicating with each other (both get
#              DISABLE_INBOUND_REPL and DISABLE_OUTBOUND_REPL); SERVER is
#              dc1 or dc2 (either names the pair). Both must be running.
#              DIR/partitioned marks it until heal.
#   heal       undoes partition, and replicates the domain NC both ways at
#              once (a change made during the partition would otherwise wait
#              for the next change on its DC or the periodic pull, 300 s).
#   replicate  dc1/dc2: replicates the domain NC both ways now (samba-tool
#              drs replicate); source1/source2: nothing (slapd's providers
#              replicate at once by themselves).
#
# It acts only on the processes in DIR's pid files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "server: $*" >&2; exit 2; }
usage="usage: server.sh DIR kill|stop|start|status|partition|heal|replicate source1|source2|dc1|dc2"
[ $# -eq 3 ] || die "$usage"
top=$1 action=$2 server=$3
[ -f "$top/testbed.env" ] || die "$top holds no test bed (no testbed.env)"
top=$(cd "$top" && pwd)

case $server in
  source1) kind=source dir=$top/source ;;
  source2) kind=source dir=$top/source2 ;;
  dc1) kind=target dir=$top/target ;;
  dc2) kind=target dir=$top/target2 ;;
  *) die "unknown server '$server'; $usage" ;;
esac
[ -d "$dir" ] || die "$top has no $server (was it brought up with up.sh --replicas?)"

pid_file() {
  if [ "$kind" = source ]; then echo "$dir/slapd.pid"; else echo "$dir/samba/run/samba.pid"; fi
}
pid_of() { local f; f=$(pid_file); [ -s "$f" ] && tr -dc 0-9 < "$f" || true; }

# The LDAPS URL and CA of this server, from its own env file.
url_and_ca() {
  local env=$dir/$kind.env
  [ -f "$env" ] || die "$dir has no $kind.env"
  local p=${kind^^}
  URL=$(sed -n "s/^${p}_URL='\(.*\)'$/\1/p" "$env")
  CA=$(sed -n "s/^${p}_CA='\(.*\)'$/\1/p" "$env")
}

status() {
  local pid; pid=$(pid_of)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  url_and_ca
  LDAPTLS_CACERT=$CA ldapsearch -H "$URL" -x -b '' -s base -o nettimeout=5 1.1 >/dev/null 2>&1
}

kill9() {
  local pid target; pid=$(pid_of)
  [ -n "$pid" ] || die "$server has no pid file ($(pid_file)): not started?"
  # Samba's root process leads its process group (pgid == pid), which holds
  # all its workers; a slapd that server.sh restarted leads its own too. If
  # the root process is already gone, its group may still hold workers
  # (Linux reuses no PID that is still a process group id).
  target=$pid
  if [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ] \
     || { ! kill -0 "$pid" 2>/dev/null && kill -0 -- "-$pid" 2>/dev/null; }; then
    target=-$pid
  fi
  kill -0 -- "$target" 2>/dev/null || die "$server (pid $pid) is not running"
  kill -KILL -- "$target"
  for _ in $(seq 50); do kill -0 -- "$target" 2>/dev/null || break; sleep 0.1; done
  kill -0 -- "$target" 2>/dev/null && die "$server ($target) still runs 5 s after SIGKILL"
  echo "server: $server killed (SIGKILL to $target)"
}

# dsa_options +|-: sets or clears both replication-disabling options on both DCs.
dsa_options() {
  local sign=$1 dc opt s
  for s in dc1 dc2; do
    "$0" "$top" status "$s" >/dev/null || die "$s is not running; start it before partition or heal"
  done
  # The two DCs at once; on one DC one option after the other (each is a
  # read-modify-write of its NTDS Settings' options).
  local jobs=() job failed=0
  for dc in dc1 dc2; do
    (for opt in DISABLE_INBOUND_REPL DISABLE_OUTBOUND_REPL; do
       "$here/target.sh" drs "$top/target" drs options "$dc.sync.test" "--dsa-option=$sign$opt" >/dev/null
     done) & jobs+=($!)
  done
  for job in "${jobs[@]}"; do wait "$job" || failed=1; done
  [ "$failed" = 0 ] || exit 2
}

# replicate_dcs: the domain NC, both ways, now (both DCs must run).
replicate_dcs() {
  local base
  base=$(sed -n "s/^TARGET_BASE_DN='\(.*\)'$/\1/p" "$top/target/target.env")
  "$here/target.sh" drs "$top/target" drs replicate dc2.sync.test dc1.sync.test "$base" >/dev/null &
  local one=$!
  "$here/target.sh" drs "$top/target" drs replicate dc1.sync.test dc2.sync.test "$base" >/dev/null \
    || { wait "$one"; exit 2; }
  wait "$one" || exit 2
}

case $action in
  kill) kill9 ;;
  stop) "$here/$kind.sh" stop "$dir"; echo "server: $server stopped" ;;
  start)
    if status; then echo "server: $server already answers"; exit 0; fi
    "$here/$kind.sh" restart "$dir" ;;
  status)
    if status; then echo "server: $server is up"; else echo "server: $server is down"; exit 1; fi ;;
  partition|heal)
    [ "$kind" = target ] || die "$action is for the DCs (dc1, dc2), not $server"
    # DIR/partitioned marks a partition (even a half-made one) until heal.
    if [ "$action" = partition ]; then
      touch "$top/partitioned"
      dsa_options +; echo "server: dc1 and dc2 partitioned (no replication either way)"
    else
      dsa_options -; replicate_dcs
      rm -f "$top/partitioned"
      echo "server: dc1 and dc2 healed (replicating again; the domain NC replicated both ways)"
    fi ;;
  replicate)
    if [ "$kind" = source ]; then
      echo "server: nothing to do: the slapd providers replicate by themselves"
      exit 0
    fi
    replicate_dcs; echo "server: replicated the domain NC both ways" ;;
  *) die "unknown action '$action'; $usage" ;;
esac

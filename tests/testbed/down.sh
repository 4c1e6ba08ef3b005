#!/usr/bin/env bash
# Stops the test bed started by up.sh DIR: only the processes it started, by PID.
# Leaves DIR in place (logs, data) unless --remove is given.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: down.sh DIR [--remove]" >&2; exit 1; }
dir=$1
rc=0
# target2 and source2: the second servers of up.sh --replicas.
for t in target2 target; do
  [ -d "$dir/$t" ] && { "$here/target.sh" stop "$dir/$t" || rc=1; }
done
for s in source2 source; do
  [ -d "$dir/$s" ] && { "$here/source.sh" stop "$dir/$s" || rc=1; }
done
if [ "${2:-}" = --remove ]; then rm -rf "$dir"; fi
echo "testbed: stopped ($dir)"
exit $rc

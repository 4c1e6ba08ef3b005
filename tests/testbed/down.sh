#!/usr/bin/env bash
# Stops the test bed started by up.sh DIR: only the processes it started, by PID.
# Leaves DIR in place (logs, data) unless --remove is given.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: down.sh DIR [--remove]" >&2; exit 1; }
dir=$1
rc=0
[ -d "$dir/target" ] && { "$here/target.sh" stop "$dir/target" || rc=1; }
[ -d "$dir/source" ] && { "$here/source.sh" stop "$dir/source" || rc=1; }
if [ "${2:-}" = --remove ]; then rm -rf "$dir"; fi
echo "testbed: stopped ($dir)"
exit $rc

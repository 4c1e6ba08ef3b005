#!/usr/bin/env bash
# The test bed's target directory: a throwaway Samba Active Directory domain
# controller (realm SYNC.TEST, host dc1.sync.test) serving only LDAP/LDAPS on
# one loopback address.
#
#   target.sh start DIR [--ip 127.0.0.N] [--exchange-schema] [--replicas]
#   target.sh join DIR2 DIR1 [--ip 127.0.0.N]
#   target.sh stop DIR
#   target.sh restart DIR
#   target.sh drs DIR SAMBA-TOOL-ARGS...
#
# start provisions a fresh domain in DIR (which must not exist or be empty),
# starts Samba with a minimal smb.conf (only the ldap service, every path under
# DIR, certificates from tls.sh), waits until LDAPS answers, then creates
#   OU=NHS Directory,DC=sync,DC=test      the OU absync writes into
#   CN=absync-svc,CN=Users,DC=sync,DC=test  a least-privilege service account
#                                         with rights on that OU only
# and checks those rights over LDAPS. --exchange-schema adds the Exchange
# attributes mailNickname, targetAddress and msExchHideFromAddressLists to the
# schema (as mayContain of mailRecipient, so contacts can carry them).
# Passwords are random, kept in DIR/secrets/*.pw (0600, no newline), never
# printed. Everything for scripts and tests is in DIR/target.env (KEY='value').
#
# Without --ip it takes the first of 127.0.0.2..254 where nothing listens on
# the LDAP ports, so several test beds can run at once (Samba's ports are
# fixed: 389, 636, 3268, 3269).
#
# --replicas prepares the DC for a second DC of the domain: the services a
# join and replication need (ldap, cldap, rpc, kdc, drepl, kcc),
# `dreplsrv:notify_interval = 1` (a change reaches the other DC in about a
# second), SPNs (samba_spnupdate), and name resolution without DNS or
# /etc/hosts: Samba runs with Debian's nss_wrapper and resolv_wrapper
# preloaded (cwrap), reading host and DNS records from DIR/cwrap.
# join DIR2 DIR1 then joins dc2.sync.test (netbios DC2) to that domain in
# DIR2, on its own address with its own certificate from DIR1's CA, starts
# it, forces the first replication both ways for the domain, configuration
# and schema NCs, and checks on DC2 what start set up on DC1 (the OUs, the
# service account and its rights, the Exchange schema). DIR2/target.env
# describes DC2; DIR1/target.env gains TARGET2_* keys.
# drs runs samba-tool (e.g. `drs replicate`, `drs options`) as the domain
# administrator with DIR's smb.conf and cwrap.
#
# stop signals only the process group of the PID in DIR's pid file and leaves
# DIR in place. The one file outside DIR is an empty lock file,
# ${TMPDIR:-/tmp}/absync-target-ip.lock, that serialises address picking.
set -Eeuo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Say which step failed, with the chain of calls (set -E: also in functions).
err_report() {
  local rc=$? i where="line ${BASH_LINENO[0]} (${FUNCNAME[1]:-main})"
  for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do
    where+=" <- line ${BASH_LINENO[i]} (${FUNCNAME[i + 1]})"
  done
  echo "target: failed (exit $rc) at $where: $BASH_COMMAND" >&2
}
trap err_report ERR

REALM=SYNC.TEST
DOMAIN=SYNC
HOST=dc1.sync.test
# The second DC of a replicated pair (join).
HOST2=dc2.sync.test
# What two DCs of one domain need to join and replicate both ways: cldap for
# the join, rpc for DRSUAPI, kdc for Kerberos between them, drepl to
# replicate, kcc to wire up replication.
REPLICA_SERVICES='ldap, cldap, rpc, kdc, drepl, kcc'
BASE_DN='DC=sync,DC=test'
OU_DN="OU=NHS Directory,$BASE_DN"
# Where absync hides objects during their grace period before deleting them:
# below the managed OU, so the account's inherited rights cover it.
QUARANTINE_DN="OU=absync quarantine,$OU_DN"
ADMIN_DN="CN=Administrator,CN=Users,$BASE_DN"
SVC_NAME=absync-svc
SVC_DN="CN=$SVC_NAME,CN=Users,$BASE_DN"
SCHEMA_DN="CN=Schema,CN=Configuration,$BASE_DN"
LDAP_PORTS='389 636 3268 3269'
# Serialises "pick a free address, start Samba on it" between concurrent starts.
IP_LOCK="${TMPDIR:-/tmp}/absync-target-ip.lock"

die() { echo "target: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# 24 random characters with upper case, lower case and digits: meets AD
# complexity (3 of 4 classes) and needs no quoting anywhere.
randpw() {
  local pw
  while :; do
    pw=$(head -c 64 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9' | head -c 24)
    [[ ${#pw} -eq 24 && $pw =~ [A-Z] && $pw =~ [a-z] && $pw =~ [0-9] ]] && break
  done
  printf %s "$pw"
}

# True if something listens on one of Samba's ports on $1 (or on all addresses).
ip_busy() {
  local ip=$1
  ss -ltnH | awk -v ip="$ip" -v ports=" $LDAP_PORTS " '
    { addr = $4; port = addr; sub(/.*:/, "", port); sub(/:[^:]*$/, "", addr)
      if (index(ports, " " port " ") && (addr == ip || addr == "*" || addr == "0.0.0.0" || addr == "[::]"))
        busy = 1 }
    END { exit !busy }'
}

pid_of() { local f=$1/samba/run/samba.pid; [ -s "$f" ] && tr -dc 0-9 < "$f" || true; }

# ---------------------------------------------------------------- stop
stop() {
  local dir=$1 pid target=''
  pid=$(pid_of "$dir")
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null && grep -qaE '^(/[^ ]*/)?samba' "/proc/$pid/cmdline" 2>/dev/null; then
    # Samba's root process leads its own process group (pgid == pid): the
    # group holds all its workers and nothing else. (The cmdline check guards
    # against a recycled PID.)
    target=$pid
    [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ] && target=-$pid
  elif kill -0 -- "-$pid" 2>/dev/null; then
    # The root process is gone but workers of its group are left. Linux does
    # not hand out a PID that is still in use as a process group id, so this
    # group can only be that Samba's.
    target=-$pid
  fi
  if [ -n "$target" ]; then
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 -- "$target" 2>/dev/null || break; sleep 0.2; done
    if kill -0 -- "$target" 2>/dev/null; then
      echo "target: samba ($pid) still running 10 s after SIGTERM; sending SIGKILL" >&2
      kill -KILL -- "$target" 2>/dev/null || true
      for _ in $(seq 25); do kill -0 -- "$target" 2>/dev/null || break; sleep 0.2; done
    fi
  fi
  rm -f "$dir/samba/run/samba.pid"
}

# EXIT trap while start runs: on failure show Samba's log and stop it.
on_start_failure() {
  local rc=$?
  [ "$rc" -ne 0 ] || return 0
  echo "target: start failed (exit $rc); last lines of $FAIL_LOG:" >&2
  tail -n 40 "$FAIL_LOG" >&2 2>/dev/null || true
  stop "$FAIL_DIR"
  echo "target: stopped samba; $FAIL_DIR is kept for inspection" >&2
  exit "$rc"
}

# check_ip IP: empty, or a loopback address 127.0.0.N.
check_ip() {
  local ip=$1
  if [ -n "$ip" ] && ! [[ $ip =~ ^127\.0\.0\.([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-4])$ ]]; then
    die "--ip must be a loopback address 127.0.0.N (N 1..254), not '$ip'"
  fi
}

# lock_and_pick_ip [IP]: takes $IP_LOCK (fd in LOCKFD, held until the caller's
# Samba listens) and sets PICKED_IP: IP if it is free, else the first free
# one of 127.0.0.2..254. So two concurrent starts cannot choose the same
# address before either listens.
lock_and_pick_ip() {
  local ip=$1 n
  exec {LOCKFD}>>"$IP_LOCK"
  flock -w 300 "$LOCKFD" || die "could not take $IP_LOCK within 300 s"
  if [ -n "$ip" ]; then
    ip_busy "$ip" && die "something already listens on $ip (ports $LDAP_PORTS); stop it or pick another --ip"
  else
    for n in $(seq 2 254); do ip_busy "127.0.0.$n" || { ip=127.0.0.$n; break; }; done
    [ -n "$ip" ] || die "no free address in 127.0.0.2..254 (or something listens on all addresses on $LDAP_PORTS)"
  fi
  PICKED_IP=$ip
}

# smb_conf NETBIOS IP SAM TLSDIR CERT SERVICES: a minimal smb.conf, all state
# under SAM, certificate TLSDIR/CERT.{pem,key} from the CA TLSDIR/ca.pem.
smb_conf() {
  local netbios=$1 ip=$2 sam=$3 tls=$4 cert=$5 services=$6 what='LDAP-only AD DC'
  [ "$services" = ldap ] || what="AD DC ($services)"
  cat <<CONF
# Written by tests/testbed/target.sh: a throwaway $what on $ip.
[global]
	netbios name = $netbios
	workgroup = $DOMAIN
	realm = $REALM
	server role = active directory domain controller
	server services = $services
	interfaces = $ip/8
	bind interfaces only = yes

	private dir = $sam/private
	state directory = $sam/state
	cache directory = $sam/cache
	lock directory = $sam/lock
	pid directory = $sam/run
	ncalrpc dir = $sam/run/ncalrpc
	winbindd socket directory = $sam/run/winbindd
	ntp signd socket directory = $sam/run/ntp_signd
	binddns dir = $sam/bind-dns
	usershare path = $sam/usershares

	logging = file
	log file = $sam/log/samba.log
	log level = 1
	max log size = 0

	load printers = no
	printcap name = /dev/null
	disable spoolss = yes

	tls enabled = yes
	tls keyfile = $tls/$cert.key
	tls certfile = $tls/$cert.pem
	tls cafile = $tls/ca.pem
CONF
}

# The smb.conf lines a DC of a replicated pair adds.
replica_conf() {
  printf '\n\t# --replicas: replicate with the other DC of the domain, and quickly\n'
  printf '\tdreplsrv:notify_interval = 1\n\tprefork children = 2\n'
}

# cwrap_setup DIR CWRAP: name resolution for the DC in DIR without DNS or
# /etc/hosts: Samba and samba-tool run with Debian's nss_wrapper and
# resolv_wrapper preloaded (see cwrap_exec), reading the host and DNS records
# that add_host writes to CWRAP/cwrap (one set per domain, shared by its DCs).
# Replication connects to <NTDS GUID>._msdcs.<realm>, which needs them.
cwrap_setup() {
  local dir=$1 cw=$2/cwrap lib
  for lib in libnss_wrapper.so libresolv_wrapper.so; do
    # The dynamic loader says so on stderr when it cannot preload a library.
    [ -z "$(LD_PRELOAD=$lib /bin/true 2>&1)" ] \
      || die "$lib is missing (install libnss-wrapper and libresolv-wrapper: tests/testbed/install.sh)"
  done
  mkdir -p "$cw" "$dir/samba/etc"
  touch "$cw/hosts" "$cw/resolv-hosts"
  cat > "$dir/samba/etc/cwrap.env" <<ENV
LD_PRELOAD=libnss_wrapper.so:libresolv_wrapper.so
NSS_WRAPPER_HOSTS=$cw/hosts
NSS_WRAPPER_PASSWD=/etc/passwd
NSS_WRAPPER_GROUP=/etc/group
RESOLV_WRAPPER_HOSTS=$cw/resolv-hosts
ENV
}

# ntds_guid DIR NAME: the objectGUID of DC NAME's NTDS Settings, read from
# the local database in DIR.
ntds_guid() {
  local dir=$1 name=${2^^} guid
  guid=$(ldbsearch -H "$dir/samba/private/sam.ldb" -s base \
    -b "CN=NTDS Settings,CN=$name,CN=Servers,CN=Default-First-Site-Name,CN=Sites,CN=Configuration,$BASE_DN" \
    objectGUID 2>/dev/null | sed -n 's/^objectGUID: //p')
  [[ $guid =~ ^[0-9a-f-]{36}$ ]] || die "could not read the NTDS Settings objectGUID of $name from $dir"
  printf %s "$guid"
}

# add_host DIR CWRAP NAME IP: the host and DNS records of the DC NAME (whose
# database is in DIR) for cwrap: its name, and its replication name
# <NTDS GUID>._msdcs.<realm>.
add_host() {
  local dir=$1 cw=$2/cwrap name=$3 ip=$4 guid dom=${REALM,,}
  guid=$(ntds_guid "$dir" "$name")
  echo "$ip $name.$dom $name $guid._msdcs.$dom" >> "$cw/hosts"
  {
    echo "A $name.$dom $ip"
    echo "CNAME $guid._msdcs.$dom $name.$dom"
    echo "SRV _ldap._tcp.dc._msdcs.$dom $name.$dom 389"
    echo "SRV _ldap._tcp.$dom $name.$dom 389"
    echo "SRV _kerberos._tcp.$dom $name.$dom 88"
    echo "SRV _kerberos._udp.$dom $name.$dom 88"
  } >> "$cw/resolv-hosts"
}

# cwrap_exec DIR CMD...: execs CMD with DIR's cwrap environment, if it has one.
cwrap_exec() {
  local dir=$1; shift
  local vars=()
  if [ -f "$dir/samba/etc/cwrap.env" ]; then mapfile -t vars < "$dir/samba/etc/cwrap.env"; fi
  exec env ${vars[@]+"${vars[@]}"} "$@"
}

# spn_update DIR: registers the DC's service principal names (without them
# the other DC's pulls fail with Kerberos "server unknown").
spn_update() {
  local dir=$1
  (cwrap_exec "$dir" samba_spnupdate -s "$dir/samba/etc/smb.conf") \
    >>"$dir/samba/log/spnupdate.log" 2>&1 </dev/null \
    || { tail -n 20 "$dir/samba/log/spnupdate.log" >&2; die "samba_spnupdate failed"; }
}

# drs DIR ARGS...: samba-tool ARGS as the domain administrator, with DIR's
# smb.conf and cwrap. The password goes by the environment (PASSWD), not argv.
drs() {
  local dir=$1; shift
  local log="$dir/samba/log/drs.log" pwf
  [ -f "$dir/target.env" ] || die "$dir holds no test-bed target (no target.env)"
  pwf=$(sed -n "s/^TARGET_ADMIN_PASSWORD_FILE='\(.*\)'$/\1/p" "$dir/target.env")
  echo "--- $(date -u +%FT%TZ) samba-tool $*" >> "$log"
  if ! (PASSWD=$(cat "$pwf"); export PASSWD
        cwrap_exec "$dir" samba-tool "$@" -s "$dir/samba/etc/smb.conf" -U Administrator) \
        >>"$log" 2>&1 </dev/null; then
    tail -n 15 "$log" >&2
    die "samba-tool $* failed (log: $log)"
  fi
}

# launch_samba DIR IP CA: starts the DC in DIR and waits until LDAPS answers
# a rootDSE query with certificate verification (max 60 s, every 0.2 s).
# Stops early if Samba died: samba -D returns 0 even when the daemon fails,
# and may die before writing its pid file. Sets SAMBA_PID.
launch_samba() {
  local dir=$1 ip=$2 ca=$3
  local sam="$dir/samba" log="$dir/samba/log/samba.log"
  # stdio to files: the daemon must not hold the caller's pipes open; the lock
  # fd is not inherited; its working directory is in DIR, not the caller's.
  (cd "$sam" && cwrap_exec "$dir" samba -D -s "$sam/etc/smb.conf") \
    </dev/null >>"$sam/log/samba.stdout" 2>&1 {LOCKFD}>&- \
    || die "samba -D failed to start"
  local pid='' ok=0 deadline=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$deadline" ]; do
    [ -n "$pid" ] || pid=$(pid_of "$dir")
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      die "samba ($pid) exited during start-up"
    fi
    if grep -qs 'daemon failed to start' "$log"; then die "samba failed to start"; fi
    if [ -z "$pid" ] && [ "$SECONDS" -gt $((deadline - 40)) ]; then
      die "samba wrote no pid file in $sam/run within 20 s"
    fi
    if LDAPTLS_CACERT=$ca ldapsearch -H "ldaps://$ip" -x -b '' -s base -o nettimeout=5 \
         dnsHostName >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
  done
  [ "$ok" = 1 ] || die "LDAPS on $ip did not answer within 60 s"
  [ -n "$pid" ] || pid=$(pid_of "$dir")
  [ -n "$pid" ] || die "samba answers but wrote no pid file in $sam/run"
  SAMBA_PID=$pid
}

# ldap_as admin|svc ldapadd|ldapmodify|... ARGS: a simple bind over LDAPS to
# $url, password read from its file (-y), certificate verified against $ca.
# (url, ca, admin_pwf and svc_pwf are the caller's.)
ldap_as() {
  local who=$1 cmd=$2; shift 2
  local bdn=$ADMIN_DN pwf=$admin_pwf
  [ "$who" = svc ] && { bdn=$SVC_DN; pwf=$svc_pwf; }
  LDAPTLS_CACERT=$ca "$cmd" -H "$url" -x -D "$bdn" -y "$pwf" -o nettimeout=10 "$@"
}

# expect_refused CMD...: the command must fail with "Insufficient access (50)".
expect_refused() {
  local out
  if out=$("$@" 2>&1); then die "expected 'Insufficient access (50)' but it succeeded: $*"; fi
  grep -q 'Insufficient access (50)' <<<"$out" || { echo "$out" >&2; die "expected 'Insufficient access (50)'"; }
}

# ---------------------------------------------------------------- start
start() {
  local dir=$1; shift
  local ip='' exchange=0 replicas=0
  while [ $# -gt 0 ]; do
    case $1 in
      --ip) [ $# -ge 2 ] || die "--ip needs an address"; ip=$2; shift 2 ;;
      --exchange-schema) exchange=1; shift ;;
      --replicas) replicas=1; shift ;;
      *) die "unknown option $1" ;;
    esac
  done
  check_ip "$ip"
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    die "$dir is not empty; every start needs a fresh (missing or empty) directory"
  fi
  [ -e "$dir" ] && [ ! -d "$dir" ] && die "$dir is not a directory"
  # Fail fast on a taken address (checked again under the lock below).
  if [ -n "$ip" ] && ip_busy "$ip"; then
    die "something already listens on $ip (ports $LDAP_PORTS); stop it or pick another --ip"
  fi
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  # Values go into single-quoted KEY='value' lines and smb.conf lines.
  [[ $dir == *[\'$'\n']* ]] && die "DIR must not contain quotes or newlines"

  local t0 t_prov t_ready
  t0=$(now)
  local sam="$dir/samba"
  local conf="$sam/etc/smb.conf"
  local ca="$dir/tls/ca.pem"
  local secrets="$dir/secrets"
  local admin_pwf="$secrets/target-admin.pw" svc_pwf="$secrets/target-svc.pw"
  local log="$sam/log/samba.log"

  (umask 077; mkdir -p "$secrets")
  chmod 700 "$secrets"
  (umask 077; randpw > "$admin_pwf"; randpw > "$svc_pwf")
  chmod 600 "$admin_pwf" "$svc_pwf"

  # 1. Provision. It does not depend on the address, so concurrent starts run
  #    it in parallel, outside the address lock. --adminpass is the only way to
  #    pass the password non-interactively (it is briefly visible in ps; this
  #    is a throwaway domain on loopback).
  mkdir -p "$sam/log"
  if ! samba-tool domain provision --targetdir="$sam" --realm="$REALM" --domain="$DOMAIN" \
      --server-role=dc --dns-backend=NONE --host-name=dc1 \
      --adminpass="$(cat "$admin_pwf")" \
      --option="log file = $sam/log/provision-samba.log" \
      > "$sam/log/provision.log" 2>&1 </dev/null; then
    tail -n 30 "$sam/log/provision.log" >&2
    die "samba-tool domain provision failed (full log: $sam/log/provision.log)"
  fi
  t_prov=$(now)

  # 2. Pick the address and start Samba under a lock, so two concurrent starts
  #    cannot choose the same address before either listens.
  lock_and_pick_ip "$ip"; ip=$PICKED_IP

  "$here/tls.sh" "$dir/tls" target "$ip" "$HOST"

  # Replace provision's smb.conf (Debian defaults: /var/log, printers, every
  # AD service) with a minimal one: only the LDAP server, all state under DIR.
  mkdir -p "$sam/run" "$sam/cache" "$sam/lock"
  local services=ldap
  [ "$replicas" = 0 ] || services=$REPLICA_SERVICES
  smb_conf DC1 "$ip" "$sam" "$dir/tls" target "$services" > "$conf"
  if [ "$replicas" = 1 ]; then replica_conf >> "$conf"; fi
  if [ "$exchange" = 1 ]; then
    printf '\n\t# --exchange-schema: allow schema changes over LDAP\n\tdsdb:schema update allowed = true\n' >> "$conf"
  fi

  # From here on, any failure stops Samba and shows its log (DIR is kept).
  # Globals: the EXIT trap runs after start's locals are gone.
  FAIL_DIR=$dir FAIL_LOG=$log
  trap on_start_failure EXIT
  trap 'exit 130' INT; trap 'exit 143' TERM   # so that EXIT runs on Ctrl-C/kill

  # --replicas: name resolution through cwrap (see cwrap_setup), from the
  # first start on, so that this DC can reach a second one joined later.
  if [ "$replicas" = 1 ]; then cwrap_setup "$dir" "$dir"; add_host "$dir" "$dir" dc1 "$ip"; fi

  # 3. Start Samba and wait until LDAPS answers.
  launch_samba "$dir" "$ip" "$ca"
  local pid=$SAMBA_PID
  t_ready=$(now)
  flock -u "$LOCKFD"; exec {LOCKFD}>&-
  if [ "$replicas" = 1 ]; then spn_update "$dir"; fi

  local url="ldaps://$ip:636"

  # 4. Optional Exchange schema extension (before anything uses it).
  if [ "$exchange" = 1 ]; then extend_schema; fi

  # 5. The OU and the service account. The account is added over LDAPS with
  #    its unicodePwd (the quoted password in UTF-16LE), built from the
  #    password file on a pipe, so the password never reaches argv or a file.
  ldap_as admin ldapadd >/dev/null <<EOF
dn: $OU_DN
objectClass: organizationalUnit
ou: NHS Directory
description: absync target OU (test bed)

dn: $QUARANTINE_DN
objectClass: organizationalUnit
ou: absync quarantine
description: absync hides objects here during their grace period (test bed)
EOF
  # userAccountControl 66048 = NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD.
  python3 - "$svc_pwf" "$SVC_DN" "$SVC_NAME" <<'PY' | ldap_as admin ldapadd >/dev/null
import base64, sys
pw = open(sys.argv[1]).read()
dn, name = sys.argv[2], sys.argv[3]
enc = base64.b64encode(('"%s"' % pw).encode("utf-16-le")).decode()
print(f"dn: {dn}\nobjectClass: user\nsAMAccountName: {name}\n"
      f"userPrincipalName: {name}@sync.test\n"
      f"description: absync least-privilege service account (test bed)\n"
      f"userAccountControl: 66048\nunicodePwd:: {enc}\n")
PY

  # 6. Rights on the OU only, and only over contacts:
  #    (OA;CI;CCDC;contact;;SID)    create/delete contact objects in the OU and
  #                                 in every container below it (sub-OUs the
  #                                 admin makes inherit it);
  #    (A;;LCRP;;;SID)              list and read the OU itself;
  #    (OA;CIIO;GA;;contact;SID)    full control, inherited only by contact
  #                                 objects below the OU.
  #    It cannot change or delete the OU or sub-OUs, cannot create users,
  #    groups or OUs, and has no rights anywhere else. This was checked to
  #    be enough for add, modify, rename and delete of contacts in the OU and
  #    in admin-made sub-OUs (check_rights does it again on every start).
  local sid
  sid=$(ldbsearch -H "$sam/private/sam.ldb" -b "$SVC_DN" -s base objectSid 2>/dev/null \
        | sed -n 's/^objectSid: //p')
  [[ $sid == S-1-5-21-* ]] || die "could not read the objectSid of $SVC_DN"
  local contact=5cb41ed0-0e4c-11d0-a286-00aa003049e2  # schemaIDGUID of class contact
  local sddl="(OA;CI;CCDC;$contact;;$sid)(A;;LCRP;;;$sid)(OA;CIIO;GA;;$contact;$sid)"
  samba-tool dsacl set -H "$sam/private/sam.ldb" -s "$conf" --objectdn="$OU_DN" --sddl="$sddl" \
    > "$sam/log/dsacl.log" 2>&1 || { cat "$sam/log/dsacl.log" >&2; die "samba-tool dsacl set failed"; }

  # 7. Check the delegation works, and nothing more (fails loudly otherwise).
  check_rights
  if [ "$exchange" = 1 ]; then check_exchange; fi

  # 8. Environment for scripts and tests.
  cat > "$dir/target.env" <<EOF
TARGET_IP='$ip'
TARGET_HOST='$HOST'
TARGET_URL='$url'
TARGET_CA='$ca'
TARGET_BASE_DN='$BASE_DN'
TARGET_OU='$OU_DN'
TARGET_QUARANTINE_OU='$QUARANTINE_DN'
TARGET_ADMIN_DN='$ADMIN_DN'
TARGET_ADMIN_PASSWORD_FILE='$admin_pwf'
TARGET_SVC_DN='$SVC_DN'
TARGET_SVC_PASSWORD_FILE='$svc_pwf'
TARGET_PID='$pid'
TARGET_EXCHANGE_SCHEMA='$exchange'
TARGET_SAM_LDB='$sam/private/sam.ldb'
EOF
  trap - EXIT INT TERM
  local t_end; t_end=$(now)
  echo "target: Samba AD DC $HOST ready (pid $pid)"
  echo "  url:     $url"
  echo "  ca:      $ca"
  echo "  ou:      $OU_DN"
  echo "  svc dn:  $SVC_DN (password in $svc_pwf)"
  if [ "$exchange" = 1 ]; then echo "  schema:  + mailNickname, targetAddress, msExchHideFromAddressLists"; fi
  echo "  env:     $dir/target.env"
  echo "  time:    LDAPS ready after $(elapsed "$t0" "$t_ready") s (provision $(elapsed "$t0" "$t_prov") s), total $(elapsed "$t0" "$t_end") s"
}

# Adds the Exchange mail-recipient attributes Samba's schema lacks, with their
# real Exchange definitions (attributeID, syntax, range, schemaIDGUID as
# published in Exchange's schema files; cross-checked against OpenChange's
# copy, setup/AD/oc_provision_schema_attributes.ldif):
#   mailNickname               1.2.840.113556.1.2.447        Unicode, single, 1..64
#   targetAddress              1.2.840.113556.1.2.352        Unicode, single, 1..1123
#   msExchHideFromAddressLists 1.2.840.113556.1.4.7000.102.73 Boolean, single
# schemaIDGUID values are the GUIDs' binary (little-endian) form in base64.
# Samba wants the schema reloaded (schemaUpdateNow) before the new attributes
# can be named in mayContain, and again before objects can use them.
extend_schema() {
  ldap_as admin ldapadd >/dev/null <<EOF
dn: CN=ms-Exch-Mail-Nickname,$SCHEMA_DN
objectClass: top
objectClass: attributeSchema
cn: ms-Exch-Mail-Nickname
lDAPDisplayName: mailNickname
attributeID: 1.2.840.113556.1.2.447
attributeSyntax: 2.5.5.12
oMSyntax: 64
isSingleValued: TRUE
rangeLower: 1
rangeUpper: 64
searchFlags: 1
schemaIDGUID:: s3mWv+YN0BGihQCqADBJ4g==
adminDisplayName: ms-Exch-Mail-Nickname
adminDescription: ms-Exch-Mail-Nickname
showInAdvancedViewOnly: TRUE

dn: CN=ms-Exch-Target-Address,$SCHEMA_DN
objectClass: top
objectClass: attributeSchema
cn: ms-Exch-Target-Address
lDAPDisplayName: targetAddress
attributeID: 1.2.840.113556.1.2.352
attributeSyntax: 2.5.5.12
oMSyntax: 64
isSingleValued: TRUE
rangeLower: 1
rangeUpper: 1123
searchFlags: 1
schemaIDGUID:: n//48JER0BGgYACqAGwz7Q==
adminDisplayName: ms-Exch-Target-Address
adminDescription: ms-Exch-Target-Address
showInAdvancedViewOnly: TRUE

dn: CN=ms-Exch-Hide-From-Address-Lists,$SCHEMA_DN
objectClass: top
objectClass: attributeSchema
cn: ms-Exch-Hide-From-Address-Lists
lDAPDisplayName: msExchHideFromAddressLists
attributeID: 1.2.840.113556.1.4.7000.102.73
attributeSyntax: 2.5.5.8
oMSyntax: 1
isSingleValued: TRUE
searchFlags: 0
schemaIDGUID:: lgscopOw0hGqBgDAT47t2A==
adminDisplayName: ms-Exch-Hide-From-Address-Lists
adminDescription: ms-Exch-Hide-From-Address-Lists
showInAdvancedViewOnly: TRUE
EOF
  schema_update_now
  ldap_as admin ldapmodify >/dev/null <<EOF
dn: CN=Mail-Recipient,$SCHEMA_DN
changetype: modify
add: mayContain
mayContain: mailNickname
mayContain: targetAddress
mayContain: msExchHideFromAddressLists
EOF
  schema_update_now
}

schema_update_now() {
  ldap_as admin ldapmodify >/dev/null <<EOF
dn:
changetype: modify
add: schemaUpdateNow
schemaUpdateNow: 1
EOF
}

# Exercises the delegation over LDAPS as the service account: add, modify,
# rename and delete a contact in the OU and in an admin-made sub-OU; adding
# in CN=Users must be refused; the account must not be in a privileged group.
check_rights() {
  local tag sub
  tag=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
  sub="OU=selftest-$tag,$OU_DN"
  contact_cycle() { # PARENT
    local parent=$1
    ldap_as svc ldapadd >/dev/null <<EOF
dn: CN=selftest $tag,$parent
objectClass: contact
cn: selftest $tag
sn: selftest
mail: selftest-$tag@example.nhs.uk
EOF
    ldap_as svc ldapmodify >/dev/null <<EOF
dn: CN=selftest $tag,$parent
changetype: modify
replace: description
description: modified by the service account
EOF
    ldap_as svc ldapmodrdn -r "CN=selftest $tag,$parent" "CN=selftest renamed $tag" >/dev/null
    ldap_as svc ldapsearch -LLL -b "CN=selftest renamed $tag,$parent" -s base description \
      | grep -q '^description: modified by the service account' \
      || die "contact in $parent lost its change after the rename"
    ldap_as svc ldapdelete "CN=selftest renamed $tag,$parent"
  }
  contact_cycle "$OU_DN"
  ldap_as admin ldapadd >/dev/null <<EOF
dn: $sub
objectClass: organizationalUnit
ou: selftest-$tag
EOF
  contact_cycle "$sub"
  ldap_as admin ldapdelete "$sub"

  expect_refused ldap_as svc ldapadd <<EOF
dn: CN=selftest $tag,CN=Users,$BASE_DN
objectClass: contact
cn: selftest $tag
EOF
  # Nor may it change the OU, or create anything but contacts in it.
  expect_refused ldap_as svc ldapmodify <<EOF
dn: $OU_DN
changetype: modify
replace: description
description: must not be allowed
EOF
  expect_refused ldap_as svc ldapadd <<EOF
dn: OU=selftest-$tag,$OU_DN
objectClass: organizationalUnit
EOF
  expect_refused ldap_as svc ldapadd <<EOF
dn: CN=selftest-$tag,$OU_DN
objectClass: user
sAMAccountName: st-$tag
EOF

  # Transitive membership test (LDAP_MATCHING_RULE_IN_CHAIN); Administrator is
  # the positive control, so a filter that never matches cannot pass.
  local filter="(|(memberOf:1.2.840.113556.1.4.1941:=CN=Domain Admins,CN=Users,$BASE_DN)(memberOf:1.2.840.113556.1.4.1941:=CN=Enterprise Admins,CN=Users,$BASE_DN)(memberOf:1.2.840.113556.1.4.1941:=CN=Schema Admins,CN=Users,$BASE_DN)(memberOf:1.2.840.113556.1.4.1941:=CN=Administrators,CN=Builtin,$BASE_DN))"
  ldap_as admin ldapsearch -LLL -b "$ADMIN_DN" -s base "$filter" 1.1 | grep -q '^dn:' \
    || die "membership check is broken: Administrator not found in Domain Admins"
  if ldap_as admin ldapsearch -LLL -b "$SVC_DN" -s base "$filter" 1.1 | grep -q '^dn:'; then
    die "$SVC_DN is in a privileged group"
  fi
}

# The service account can write the new attributes on a contact.
check_exchange() {
  local tag dn out
  tag=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
  dn="CN=selftest exchange $tag,$OU_DN"
  ldap_as svc ldapadd >/dev/null <<EOF
dn: $dn
objectClass: contact
cn: selftest exchange $tag
mailNickname: selftest-$tag
targetAddress: SMTP:x@nhs.net
msExchHideFromAddressLists: TRUE
EOF
  out=$(ldap_as svc ldapsearch -LLL -b "$dn" -s base mailNickname targetAddress msExchHideFromAddressLists)
  grep -q "^mailNickname: selftest-$tag$" <<<"$out" \
    && grep -q '^targetAddress: SMTP:x@nhs.net$' <<<"$out" \
    && grep -q '^msExchHideFromAddressLists: TRUE$' <<<"$out" \
    || { echo "$out" >&2; die "Exchange attributes did not read back"; }
  ldap_as svc ldapdelete "$dn"
}

# ---------------------------------------------------------------- join
# join DIR2 DIR1 [--ip 127.0.0.N]: a second DC (dc2.sync.test) for the domain
# of the DC in DIR1 (started with --replicas), in DIR2 on its own address.
join() {
  local dir=$1 dir1=$2; shift 2
  local ip=''
  while [ $# -gt 0 ]; do
    case $1 in
      --ip) [ $# -ge 2 ] || die "--ip needs an address"; ip=$2; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  check_ip "$ip"
  [ -f "$dir1/target.env" ] || die "$dir1 holds no test-bed target (no target.env)"
  [ -f "$dir1/samba/etc/cwrap.env" ] || die "$dir1 was not started with --replicas"
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    die "$dir is not empty; every join needs a fresh (missing or empty) directory"
  fi
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd); dir1=$(cd "$dir1" && pwd)
  [[ $dir == *[\'$'\n']* ]] && die "DIR must not contain quotes or newlines"
  # shellcheck disable=SC1091
  . "$dir1/target.env"
  local t0 t_join t_ready t_repl
  t0=$(now)
  local sam="$dir/samba" ca=$TARGET_CA
  local conf="$sam/etc/smb.conf" log="$sam/log/samba.log"
  local admin_pwf=$TARGET_ADMIN_PASSWORD_FILE svc_pwf=$TARGET_SVC_PASSWORD_FILE
  mkdir -p "$sam"/{etc,log,run,cache,lock}

  # 1. The address, its certificate (from DC1's CA, so one CA file serves
  #    both), a smb.conf like DC1's, and cwrap sharing DC1's records.
  lock_and_pick_ip "$ip"; ip=$PICKED_IP
  "$here/tls.sh" "$dir1/tls" target2 "$ip" "$HOST2"
  smb_conf DC2 "$ip" "$sam" "$dir1/tls" target2 "$REPLICA_SERVICES" > "$conf"
  replica_conf >> "$conf"
  # The join refuses a DC's smb.conf without these shares (nothing serves
  # them: there is no smbd).
  printf '\n[sysvol]\n\tpath = %s\n\tread only = no\n' "$sam/state/sysvol" >> "$conf"
  printf '\n[netlogon]\n\tpath = %s\n\tread only = no\n' "$sam/state/sysvol/${REALM,,}/scripts" >> "$conf"
  cwrap_setup "$dir" "$dir1"
  FAIL_DIR=$dir FAIL_LOG=$sam/log/join.log
  trap on_start_failure EXIT
  trap 'exit 130' INT; trap 'exit 143' TERM

  # 2. Join (it replicates the whole domain from DC1), then its records.
  if ! (PASSWD=$(cat "$admin_pwf"); export PASSWD
        cwrap_exec "$dir" samba-tool domain join "$REALM" DC -s "$conf" -U Administrator \
          --server="$TARGET_IP" --dns-backend=NONE) >"$sam/log/join.log" 2>&1 </dev/null; then
    die "samba-tool domain join failed (log: $sam/log/join.log)"
  fi
  t_join=$(now)
  add_host "$dir" "$dir1" "${HOST2%%.*}" "$ip"

  # 3. Start, register its SPNs, then the first replication both ways: right
  #    after a join only DC1 -> DC2 is wired, DC2 -> DC1 waits for the KCC.
  FAIL_LOG=$log
  launch_samba "$dir" "$ip" "$ca"
  local pid=$SAMBA_PID
  t_ready=$(now)
  flock -u "$LOCKFD"; exec {LOCKFD}>&-
  spn_update "$dir"
  cat "$dir1/target.env" > "$dir/target.env"   # for drs (until step 5)
  # All six at once: each is mostly samba-tool starting up.
  local nc jobs=() job
  for nc in "$BASE_DN" "CN=Configuration,$BASE_DN" "$SCHEMA_DN"; do
    drs "$dir" drs replicate "$HOST2" "$HOST" "$nc" & jobs+=($!)
    drs "$dir" drs replicate "$HOST" "$HOST2" "$nc" & jobs+=($!)
  done
  for job in "${jobs[@]}"; do wait "$job" || die "the first replication between $HOST and $HOST2 failed"; done
  t_repl=$(now)

  # 4. What DC1 holds is on DC2: the OUs and the service account with its
  #    rights (check_rights, on DC2), and the Exchange schema if DC1 has it.
  local url="ldaps://$ip:636" dn
  for dn in "$OU_DN" "$QUARANTINE_DN" "$SVC_DN"; do
    ldap_as admin ldapsearch -LLL -b "$dn" -s base 1.1 | grep -q '^dn:' \
      || die "$dn is not on $HOST2 after the join"
  done
  check_rights
  if [ "$TARGET_EXCHANGE_SCHEMA" = 1 ]; then check_exchange; fi

  # 5. Environment: DIR2/target.env describes DC2 (as DC1's describes DC1, so
  #    restart DIR2 works); DC1's gains TARGET2_* keys.
  {
    grep -vE '^TARGET_(IP|HOST|URL|PID|SAM_LDB)=' "$dir1/target.env"
    echo "TARGET_IP='$ip'"
    echo "TARGET_HOST='$HOST2'"
    echo "TARGET_URL='$url'"
    echo "TARGET_PID='$pid'"
    echo "TARGET_SAM_LDB='$sam/private/sam.ldb'"
  } > "$dir/target.env"
  cat >> "$dir1/target.env" <<ENV
TARGET_DIR='$dir1'
TARGET_PID_FILE='$dir1/samba/run/samba.pid'
TARGET2_DIR='$dir'
TARGET2_IP='$ip'
TARGET2_HOST='$HOST2'
TARGET2_URL='$url'
TARGET2_PID='$pid'
TARGET2_PID_FILE='$sam/run/samba.pid'
TARGET2_SAM_LDB='$sam/private/sam.ldb'
ENV
  trap - EXIT INT TERM
  local t_end; t_end=$(now)
  echo "target: second DC $HOST2 of $REALM ready (pid $pid)"
  echo "  url:     $url"
  echo "  env:     $dir/target.env"
  echo "  time:    joined after $(elapsed "$t0" "$t_join") s, LDAPS ready after $(elapsed "$t0" "$t_ready") s, replicated after $(elapsed "$t0" "$t_repl") s, checked, total $(elapsed "$t0" "$t_end") s"
}

# Starts the already provisioned domain in DIR again (after stop, or after
# it was killed), on the same address, and waits until LDAPS answers.
restart() {
  local dir=$1
  [ -f "$dir/target.env" ] || die "$dir holds no test-bed target (no target.env)"
  # shellcheck disable=SC1091
  . "$dir/target.env"
  stop "$dir"
  local sam="$dir/samba"
  # A killed Samba leaves its pid file; the new one writes its own.
  rm -f "$sam/run/samba.pid"
  (cd "$sam" && cwrap_exec "$dir" samba -D -s "$sam/etc/smb.conf") </dev/null \
    >>"$sam/log/samba.stdout" 2>&1 || die "samba -D failed to start"
  local deadline=$((SECONDS + 60))
  until LDAPTLS_CACERT=$TARGET_CA ldapsearch -H "$TARGET_URL" -x -b '' -s base -o nettimeout=5 \
          dnsHostName >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "LDAPS on $TARGET_IP did not answer within 60 s"
    sleep 0.2
  done
  echo "target: restarted (pid $(pid_of "$dir"))"
}

case ${1:-} in
  start) [ $# -ge 2 ] || die "usage: target.sh start DIR [--ip 127.0.0.N] [--exchange-schema] [--replicas]"
         shift; start "$@" ;;
  join)  [ $# -ge 3 ] || die "usage: target.sh join DIR2 DIR1 [--ip 127.0.0.N]"
         shift; join "$@" ;;
  stop)  [ $# -eq 2 ] || die "usage: target.sh stop DIR"
         stop "$2" ;;
  restart) [ $# -eq 2 ] || die "usage: target.sh restart DIR"
         restart "$2" ;;
  drs)   [ $# -ge 3 ] || die "usage: target.sh drs DIR SAMBA-TOOL-ARGS..."
         shift; drs "$@" ;;
  *) die "usage: target.sh start DIR [--ip 127.0.0.N] [--exchange-schema] [--replicas] | join DIR2 DIR1 [--ip 127.0.0.N] | stop DIR | restart DIR | drs DIR SAMBA-TOOL-ARGS..." ;;
esac

#!/usr/bin/env bash
# The test bed's source directory: a throwaway OpenLDAP slapd shaped like the
# NHS Directory, on 127.0.0.1 high ports (plain LDAP and LDAPS).
#
#   source.sh start DIR [--port N] [--tls-port N] [--load FILE.ldif]...
#                       [--replica DIR2]
#   source.sh stop DIR
#   source.sh restart DIR
#
# start builds a fresh cn=config in DIR (mdb database, suffix o=nhs, the nhs
# schema, syncprov, production-like size limits), bulk-loads the given LDIF
# files offline with slapadd, starts slapd and waits until LDAPS answers.
# It writes DIR/source.env (KEY='value' lines) for scripts and tests.
# absync binds as cn=absync-reader (read-only, size-limited like production);
# the rootDN cn=admin,o=nhs is for the test harness only.
#
# --replica DIR2 makes it two providers of one directory (multi-provider
# replication, OpenLDAP 2.5): DIR becomes serverID 1 and a second slapd in
# DIR2 serverID 2, each with syncprov and a syncrepl (refreshAndPersist, as
# the rootDN over plain LDAP on loopback) to the other. The second has its own
# ports, data and LDAPS certificate (DIR/tls/source2.pem, from the same CA, so
# DIR/tls/ca.pem serves both). Data is loaded once, into the first; the
# second fills by replication, and start returns once both hold the same
# entries (same contextCSN and entry count) and one write from each has
# reached the other (see start_replica). DIR2/source.env describes the
# second (so restart DIR2 works); DIR/source.env also gets SOURCE2_* keys.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SUFFIX='o=nhs'
ADMIN_DN='cn=admin,o=nhs'
SYNC_DN='cn=absync-reader,ou=Service Accounts,o=nhs'
IP=127.0.0.1

die() { echo "source: $*" >&2; exit 1; }
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
randpw() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

stop() {
  local dir=$1 pid
  [ -f "$dir/slapd.pid" ] || return 0
  pid=$(cat "$dir/slapd.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/slapd.pid"
}

# config_ldif DIR TLSDIR CERT SID PEER_URL ADMIN_PW: the cn=config of one
# slapd whose state lives in DIR, with certificate TLSDIR/CERT.{pem,key}.
# With SID (else empty), it is provider SID of a multi-provider pair and
# consumes from PEER_URL (as the rootDN).
config_ldif() {
  local dir=$1 tls=$2 cert=$3 sid=${4:-} peer=${5:-} admin_pw=${6:-}
  # Extra lines, appended to existing ones so that an absent one adds no
  # blank line (which would end the LDIF entry).
  local sid_line='' repl_lines=''
  if [ -n "$sid" ]; then
    sid_line=$'\n'"olcServerID: $sid"
    repl_lines=$'\n'"olcSyncrepl: rid=001 provider=$peer bindmethod=simple binddn=\"$ADMIN_DN\" credentials=$admin_pw searchbase=\"$SUFFIX\" type=refreshAndPersist retry=\"1 10 5 +\" timeout=3 network-timeout=3"
    repl_lines+=$'\n'"olcMultiProvider: TRUE"
  fi
  cat <<LDIF
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: $dir/slapd.pid
olcArgsFile: $dir/slapd.args
olcTLSCACertificateFile: $tls/ca.pem
olcTLSCertificateFile: $tls/$cert.pem
olcTLSCertificateKeyFile: $tls/$cert.key
olcLogLevel: none$sid_line

dn: cn=module{0},cn=config
objectClass: olcModuleList
cn: module{0}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: syncprov

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif
include: file:///etc/ldap/schema/cosine.ldif
include: file:///etc/ldap/schema/inetorgperson.ldif
include: file://$here/nhs-schema.ldif

dn: olcDatabase={-1}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {-1}frontend
olcSizeLimit: size.soft=1000 size.hard=1000 size.prtotal=unlimited

dn: olcDatabase={0}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {0}config
olcAccess: {0}to * by dn.exact=gidNumber=0+uidNumber=0,cn=peercred,cn=external,cn=auth manage by * none

dn: olcDatabase={1}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {1}mdb
olcSuffix: $SUFFIX
olcRootDN: $ADMIN_DN
olcRootPW: $(slappasswd -s "$admin_pw")
olcDbDirectory: $dir/data
olcDbMaxSize: 17179869184
olcDbNoSync: TRUE
olcDbIndex: objectClass eq
olcDbIndex: nhsOdsCode eq
olcDbIndex: entryUUID eq
olcDbIndex: entryCSN eq
olcDbIndex: uid eq
olcSizeLimit: size.soft=1000 size.hard=1000 size.prtotal=unlimited
olcAccess: {0}to attrs=userPassword by self =xw by anonymous auth by * none
olcAccess: {1}to dn.subtree="$SUFFIX" filter=(|(objectClass=nhsPerson)(objectClass=nhsOrganisation)(objectClass=organizationalUnit)(objectClass=organization)) by dn.exact="$SYNC_DN" read by * none
olcAccess: {2}to * by * none$repl_lines

dn: olcOverlay={0}syncprov,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {0}syncprov
olcSpCheckpoint: 100 10
olcSpSessionlog: 10000
LDIF
}

# launch DIR IP PORT TLS_PORT CA: starts slapd on DIR's cn=config (in the
# foreground of a background job, so its PID is ours), waits until LDAPS
# answers and writes DIR/slapd.pid. Sets LAUNCHED to the PID.
launch() {
  local dir=$1 ip=$2 port=$3 tls_port=$4 ca=$5
  local urls="ldap://$ip:$port/ ldaps://$ip:$tls_port/ ldapi://$(printf '%s' "$dir/ldapi" | sed 's,/,%2F,g')"
  slapd -d 0 -F "$dir/config" -h "$urls" >"$dir/log/slapd.log" 2>&1 &
  local launcher=$!
  local ok=0
  for _ in $(seq 150); do
    if ! kill -0 "$launcher" 2>/dev/null; then break; fi
    if LDAPTLS_CACERT="$ca" ldapsearch -H "ldaps://$ip:$tls_port" -x -b '' -s base \
         -o nettimeout=2 namingContexts >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
  done
  if [ "$ok" != 1 ]; then
    tail -20 "$dir/log/slapd.log" >&2
    kill -KILL "$launcher" 2>/dev/null || true
    die "slapd did not answer on ldaps://$ip:$tls_port"
  fi
  # slapd -d stays in the foreground: its PID is the launcher's. Keep the
  # pid file authoritative in case slapd wrote it late.
  echo "$launcher" > "$dir/slapd.pid"
  LAUNCHED=$launcher
}

# env_lines PREFIX DIR IP PORT TLS_PORT: the addresses of one server as
# KEY='value' lines.
env_lines() {
  local p=$1 dir=$2 ip=$3 port=$4 tls_port=$5
  cat <<ENV
${p}_URL='ldaps://$ip:$tls_port'
${p}_LDAP_URL='ldap://$ip:$port'
${p}_LDAPI_URL='ldapi://$(printf '%s' "$dir/ldapi" | sed 's,/,%2F,g')'
ENV
}

start() {
  local dir=$1; shift
  local port='' tls_port='' loads=() dir2=''
  while [ $# -gt 0 ]; do
    case $1 in
      --port) port=$2; shift 2 ;;
      --tls-port) tls_port=$2; shift 2 ;;
      --load) loads+=("$(readlink -f "$2")"); shift 2 ;;
      --replica) [ $# -ge 2 ] || die "--replica needs a directory"; dir2=$2; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    die "$dir is not empty; every start needs a fresh directory"
  fi
  if [ -n "$dir2" ] && [ -e "$dir2" ] && [ -n "$(ls -A "$dir2" 2>/dev/null)" ]; then
    die "$dir2 is not empty; every start needs a fresh directory"
  fi
  command -v slapd >/dev/null || command -v /usr/sbin/slapd >/dev/null || die "slapd is not installed (run tests/testbed/install.sh)"
  local t0; t0=$(date +%s.%N)
  mkdir -p "$dir"/{config,data,secrets,log}
  dir=$(cd "$dir" && pwd)
  chmod 700 "$dir/secrets"
  [ -n "$port" ] || port=$(freeport)
  [ -n "$tls_port" ] || tls_port=$(freeport)
  local port2='' tls_port2='' sid='' peer=''
  if [ -n "$dir2" ]; then
    mkdir -p "$dir2"/{config,data,log}
    dir2=$(cd "$dir2" && pwd)
    port2=$(freeport); tls_port2=$(freeport)
    sid=1 peer="ldap://$IP:$port2"
  fi

  "$here/tls.sh" "$dir/tls" source "$IP" localhost

  local admin_pw sync_pw
  admin_pw=$(randpw); sync_pw=$(randpw)
  (umask 077; printf '%s' "$admin_pw" > "$dir/secrets/source-admin.pw"
               printf '%s' "$sync_pw" > "$dir/secrets/source-sync.pw")

  # cn=config, loaded offline. Size limits as in production directories:
  # an unpaged search stops at 1,000 entries, a paged one returns everything.
  # (With --replica it holds the replication password: owner-only.)
  [ -z "$dir2" ] || { : > "$dir/config.ldif"; chmod 600 "$dir/config.ldif"; }
  config_ldif "$dir" "$dir/tls" source "$sid" "$peer" "$admin_pw" > "$dir/config.ldif"
  slapadd -n0 -F "$dir/config" -l "$dir/config.ldif" >/dev/null 2>"$dir/log/slapadd-config.log" \
    || { cat "$dir/log/slapadd-config.log" >&2; die "building cn=config failed"; }

  # The skeleton every test bed has: the suffix, the containers, the sync account.
  cat > "$dir/base.ldif" <<LDIF
dn: $SUFFIX
objectClass: organization
o: nhs

dn: ou=Service Accounts,$SUFFIX
objectClass: organizationalUnit
ou: Service Accounts

dn: $SYNC_DN
objectClass: person
objectClass: simpleSecurityObject
cn: absync-reader
sn: absync-reader
userPassword: $(slappasswd -s "$sync_pw")
LDIF
  # Provider 1 writes the entryCSNs of the bulk load (-S 1), so provider 2
  # takes them over as they are.
  local sid_opt=()
  [ -z "$sid" ] || sid_opt=(-S "$sid")
  slapadd -q -w ${sid_opt[@]+"${sid_opt[@]}"} -b "$SUFFIX" -F "$dir/config" -l "$dir/base.ldif" >/dev/null 2>"$dir/log/slapadd-base.log" \
    || { cat "$dir/log/slapadd-base.log" >&2; die "loading the base entries failed"; }
  local f
  for f in ${loads[@]+"${loads[@]}"}; do
    slapadd -q -w ${sid_opt[@]+"${sid_opt[@]}"} -b "$SUFFIX" -F "$dir/config" -l "$f" >/dev/null 2>"$dir/log/slapadd-load.log" \
      || { tail -20 "$dir/log/slapadd-load.log" >&2; die "loading $f failed"; }
  done

  launch "$dir" "$IP" "$port" "$tls_port" "$dir/tls/ca.pem"
  local launcher=$LAUNCHED

  {
    env_lines SOURCE "$dir" "$IP" "$port" "$tls_port"
    cat <<ENV
SOURCE_CA='$dir/tls/ca.pem'
SOURCE_BASE_DN='$SUFFIX'
SOURCE_ADMIN_DN='$ADMIN_DN'
SOURCE_ADMIN_PASSWORD_FILE='$dir/secrets/source-admin.pw'
SOURCE_SYNC_DN='$SYNC_DN'
SOURCE_SYNC_PASSWORD_FILE='$dir/secrets/source-sync.pw'
SOURCE_PID='$launcher'
ENV
  } > "$dir/source.env"
  local t1; t1=$(date +%s.%N)
  printf 'source: slapd ready on ldaps://%s:%s (plain ldap://%s:%s) in %.1fs\n' "$IP" "$tls_port" "$IP" "$port" "$(echo "$t1 - $t0" | bc 2>/dev/null || python3 -c "print($t1-$t0)")"
  if [ -n "$dir2" ]; then
    start_replica "$dir" "$dir2" "$port" "$port2" "$tls_port2" "$admin_pw"
  fi
  echo "source: CA $dir/tls/ca.pem; sync account $SYNC_DN; env $dir/source.env"
}

# start_replica DIR DIR2 PORT1 PORT2 TLS_PORT2 ADMIN_PW: the second provider
# in DIR2, empty until it has replicated everything from the first.
start_replica() {
  local dir=$1 dir2=$2 port1=$3 port2=$4 tls_port2=$5 admin_pw=$6
  local t0; t0=$(date +%s.%N)
  "$here/tls.sh" "$dir/tls" source2 "$IP" localhost
  : > "$dir2/config.ldif"; chmod 600 "$dir2/config.ldif"
  config_ldif "$dir2" "$dir/tls" source2 2 "ldap://$IP:$port1" "$admin_pw" > "$dir2/config.ldif"
  slapadd -n0 -F "$dir2/config" -l "$dir2/config.ldif" >/dev/null 2>"$dir2/log/slapadd-config.log" \
    || { cat "$dir2/log/slapadd-config.log" >&2; die "building cn=config of the second provider failed"; }
  launch "$dir2" "$IP" "$port2" "$tls_port2" "$dir/tls/ca.pem"
  local pid2=$LAUNCHED

  # Its own source.env (for restart DIR2): the first's, with its own
  # addresses and PID.
  {
    env_lines SOURCE "$dir2" "$IP" "$port2" "$tls_port2"
    grep -vE '^SOURCE_(URL|LDAP_URL|LDAPI_URL|PID)=' "$dir/source.env"
    echo "SOURCE_PID='$pid2'"
  } > "$dir2/source.env"
  {
    env_lines SOURCE2 "$dir2" "$IP" "$port2" "$tls_port2"
    echo "SOURCE2_PID='$pid2'"
    echo "SOURCE_PID_FILE='$dir/slapd.pid'"
    echo "SOURCE2_PID_FILE='$dir2/slapd.pid'"
    echo "SOURCE_DIR='$dir'"
    echo "SOURCE2_DIR='$dir2'"
    echo "SOURCE_SERVER_ID='1'"
    echo "SOURCE2_SERVER_ID='2'"
  } >> "$dir/source.env"

  ADMIN_PWF=$dir/secrets/source-admin.pw
  wait_same "ldap://$IP:$port1" "ldap://$IP:$port2"
  # One write from each side, as on providers that have served for a while:
  # an entry added on the second and deleted on the first. This checks
  # replication both ways, and puts both serverIDs in the contextCSN. Until
  # a serverID first writes, cookies carry no CSN for it, and once it does,
  # slapd answers such a cookie (on either provider) with a full reload
  # (every entry, refreshDeletes false) instead of the changes since.
  local check="cn=replication check,ou=Service Accounts,$SUFFIX"
  printf 'dn: %s\nobjectClass: person\ncn: replication check\nsn: check\n' "$check" \
    | ldap_admin_modify "ldap://$IP:$port2" -a
  wait_entry "ldap://$IP:$port1" "$check" present
  printf 'dn: %s\nchangetype: delete\n' "$check" | ldap_admin_modify "ldap://$IP:$port1"
  wait_entry "ldap://$IP:$port2" "$check" absent
  wait_same "ldap://$IP:$port1" "ldap://$IP:$port2"
  local t1; t1=$(date +%s.%N)
  printf 'source: second provider ready on ldaps://%s:%s, replicated in %.1fs\n' "$IP" "$tls_port2" \
    "$(python3 -c "print($t1-$t0)")"
}

# ldap_admin URL ARGS...: ldapsearch as the rootDN over plain LDAP (loopback);
# ldap_admin_modify URL ARGS...: ldapmodify likewise (LDIF on stdin).
ldap_admin() {
  local url=$1; shift
  ldapsearch -LLL -o ldif-wrap=no -o nettimeout=5 -x -H "$url" -D "$ADMIN_DN" \
    -y "$ADMIN_PWF" "$@"
}
ldap_admin_modify() {
  local url=$1; shift
  ldapmodify -o nettimeout=5 -x -H "$url" -D "$ADMIN_DN" -y "$ADMIN_PWF" "$@" >/dev/null
}

# wait_entry URL DN present|absent: waits (30 s at most) until DN is there or gone.
wait_entry() {
  local url=$1 dn=$2 want=$3 deadline=$((SECONDS + 30)) found
  while :; do
    found=absent
    ldap_admin "$url" -b "$dn" -s base 1.1 2>/dev/null | grep -q '^dn:' && found=present
    [ "$found" = "$want" ] && return 0
    [ "$SECONDS" -lt "$deadline" ] || die "$dn still not $want on $url after 30 s: replication fails"
    sleep 0.05
  done
}

# wait_same URL1 URL2: waits until both providers hold the same contextCSN
# vector and the same number of entries.
wait_same() {
  local url1=$1 url2=$2 csn1 csn2 n1 n2
  local deadline=$((SECONDS + 600))
  while :; do
    csn1=$(ldap_admin "$url1" -b "$SUFFIX" -s base contextCSN 2>/dev/null | grep '^contextCSN:' | sort || true)
    csn2=$(ldap_admin "$url2" -b "$SUFFIX" -s base contextCSN 2>/dev/null | grep '^contextCSN:' | sort || true)
    if [ -n "$csn1" ] && [ "$csn1" = "$csn2" ]; then
      n1=$(ldap_admin "$url1" -b "$SUFFIX" 1.1 | grep -c '^dn:' || true)
      n2=$(ldap_admin "$url2" -b "$SUFFIX" 1.1 | grep -c '^dn:' || true)
      [ "$n1" = "$n2" ] && return 0
    fi
    [ "$SECONDS" -lt "$deadline" ] \
      || die "the second provider did not catch up within 600 s (contextCSN '$csn1' vs '$csn2')"
    sleep 0.2
  done
}

# Starts the existing directory in DIR again (after stop, or after it was
# killed), on the same ports, and waits until LDAPS answers.
restart() {
  local dir=$1
  [ -f "$dir/source.env" ] || die "$dir holds no test-bed source (no source.env)"
  # shellcheck disable=SC1091
  . "$dir/source.env"
  stop "$dir"
  local urls="$SOURCE_LDAP_URL/ $SOURCE_URL/ $SOURCE_LDAPI_URL"
  setsid slapd -d 0 -F "$dir/config" -h "$urls" >>"$dir/log/slapd.log" 2>&1 < /dev/null &
  local pid=$!
  for _ in $(seq 300); do
    if LDAPTLS_CACERT="$SOURCE_CA" ldapsearch -H "$SOURCE_URL" -x -b '' -s base \
         -o nettimeout=2 namingContexts >/dev/null 2>&1; then
      echo "$pid" > "$dir/slapd.pid"
      echo "source: restarted (pid $pid)"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  tail -20 "$dir/log/slapd.log" >&2
  die "slapd did not answer on $SOURCE_URL after a restart"
}

case ${1:-} in
  start) shift; [ $# -ge 1 ] || die "usage: source.sh start DIR [options]"; start "$@" ;;
  stop) shift; [ $# -ge 1 ] || die "usage: source.sh stop DIR"; stop "$1" ;;
  restart) shift; [ $# -ge 1 ] || die "usage: source.sh restart DIR"; restart "$1" ;;
  *) die "usage: source.sh start DIR [--port N] [--tls-port N] [--load FILE]... [--replica DIR2] | stop DIR | restart DIR" ;;
esac

#!/usr/bin/env bash
# The test bed's source directory: a throwaway OpenLDAP slapd shaped like the
# NHS Directory, on 127.0.0.1 high ports (plain LDAP and LDAPS).
#
#   source.sh start DIR [--port N] [--tls-port N] [--load FILE.ldif]...
#   source.sh stop DIR
#
# start builds a fresh cn=config in DIR (mdb database, suffix o=nhs, the nhs
# schema, syncprov, production-like size limits), bulk-loads the given LDIF
# files offline with slapadd, starts slapd and waits until LDAPS answers.
# It writes DIR/source.env (KEY='value' lines) for scripts and tests.
# absync binds as cn=absync-reader (read-only, size-limited like production);
# the rootDN cn=admin,o=nhs is for the test harness only.
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

start() {
  local dir=$1; shift
  local port='' tls_port='' loads=()
  while [ $# -gt 0 ]; do
    case $1 in
      --port) port=$2; shift 2 ;;
      --tls-port) tls_port=$2; shift 2 ;;
      --load) loads+=("$(readlink -f "$2")"); shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    die "$dir is not empty; every start needs a fresh directory"
  fi
  command -v slapd >/dev/null || command -v /usr/sbin/slapd >/dev/null || die "slapd is not installed (run tests/testbed/install.sh)"
  local t0; t0=$(date +%s.%N)
  mkdir -p "$dir"/{config,data,secrets,log}
  dir=$(cd "$dir" && pwd)
  chmod 700 "$dir/secrets"
  [ -n "$port" ] || port=$(freeport)
  [ -n "$tls_port" ] || tls_port=$(freeport)

  "$here/tls.sh" "$dir/tls" source "$IP" localhost

  local admin_pw sync_pw
  admin_pw=$(randpw); sync_pw=$(randpw)
  (umask 077; printf '%s' "$admin_pw" > "$dir/secrets/source-admin.pw"
               printf '%s' "$sync_pw" > "$dir/secrets/source-sync.pw")

  # cn=config, loaded offline. Size limits as in production directories:
  # an unpaged search stops at 1,000 entries, a paged one returns everything.
  cat > "$dir/config.ldif" <<LDIF
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: $dir/slapd.pid
olcArgsFile: $dir/slapd.args
olcTLSCACertificateFile: $dir/tls/ca.pem
olcTLSCertificateFile: $dir/tls/source.pem
olcTLSCertificateKeyFile: $dir/tls/source.key
olcLogLevel: none

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
olcAccess: {2}to * by * none

dn: olcOverlay={0}syncprov,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {0}syncprov
olcSpCheckpoint: 100 10
olcSpSessionlog: 10000
LDIF
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
  slapadd -q -w -b "$SUFFIX" -F "$dir/config" -l "$dir/base.ldif" >/dev/null 2>"$dir/log/slapadd-base.log" \
    || { cat "$dir/log/slapadd-base.log" >&2; die "loading the base entries failed"; }
  local f
  for f in ${loads[@]+"${loads[@]}"}; do
    slapadd -q -w -b "$SUFFIX" -F "$dir/config" -l "$f" >/dev/null 2>"$dir/log/slapadd-load.log" \
      || { tail -20 "$dir/log/slapadd-load.log" >&2; die "loading $f failed"; }
  done

  local urls="ldap://$IP:$port/ ldaps://$IP:$tls_port/ ldapi://$(printf '%s' "$dir/ldapi" | sed 's,/,%2F,g')"
  slapd -d 0 -F "$dir/config" -h "$urls" >"$dir/log/slapd.log" 2>&1 &
  local launcher=$!
  local ok=0
  for _ in $(seq 150); do
    if ! kill -0 "$launcher" 2>/dev/null; then break; fi
    if LDAPTLS_CACERT="$dir/tls/ca.pem" ldapsearch -H "ldaps://$IP:$tls_port" -x -b '' -s base \
         -o nettimeout=2 namingContexts >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
  done
  if [ "$ok" != 1 ]; then
    tail -20 "$dir/log/slapd.log" >&2
    kill -KILL "$launcher" 2>/dev/null || true
    die "slapd did not answer on ldaps://$IP:$tls_port"
  fi
  # slapd -d stays in the foreground: its PID is the launcher's. Keep the
  # pid file authoritative in case slapd wrote it late.
  echo "$launcher" > "$dir/slapd.pid"

  cat > "$dir/source.env" <<ENV
SOURCE_URL='ldaps://$IP:$tls_port'
SOURCE_LDAP_URL='ldap://$IP:$port'
SOURCE_LDAPI_URL='ldapi://$(printf '%s' "$dir/ldapi" | sed 's,/,%2F,g')'
SOURCE_CA='$dir/tls/ca.pem'
SOURCE_BASE_DN='$SUFFIX'
SOURCE_ADMIN_DN='$ADMIN_DN'
SOURCE_ADMIN_PASSWORD_FILE='$dir/secrets/source-admin.pw'
SOURCE_SYNC_DN='$SYNC_DN'
SOURCE_SYNC_PASSWORD_FILE='$dir/secrets/source-sync.pw'
SOURCE_PID='$launcher'
ENV
  local t1; t1=$(date +%s.%N)
  printf 'source: slapd ready on ldaps://%s:%s (plain ldap://%s:%s) in %.1fs\n' "$IP" "$tls_port" "$IP" "$port" "$(echo "$t1 - $t0" | bc 2>/dev/null || python3 -c "print($t1-$t0)")"
  echo "source: CA $dir/tls/ca.pem; sync account $SYNC_DN; env $dir/source.env"
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
  *) die "usage: source.sh start DIR [--port N] [--tls-port N] [--load FILE]... | stop DIR" ;;
esac

#!/usr/bin/env bash
# tls.sh DIR NAME IP HOSTNAME
# Generates a private CA and a server certificate for one test server under DIR:
#   DIR/ca.pem (the CA clients trust), DIR/ca.key,
#   DIR/NAME.pem, DIR/NAME.key (the server's certificate and key).
# The server certificate carries subjectAltNames for localhost, the IP and the
# host name, so clients that verify host names (rustls) accept it.
# Keys are generated fresh for every test bed; none is ever committed.
set -euo pipefail
dir=$1 name=$2 ip=$3 host=$4
mkdir -p "$dir"; chmod 700 "$dir"
umask 077
if [ ! -f "$dir/ca.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -sha256 \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" \
    -subj "/O=absync test bed/CN=absync test CA ($name)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
openssl req -newkey rsa:2048 -nodes -sha256 \
  -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/O=absync test bed/CN=$host" 2>/dev/null
cat > "$dir/$name.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:$host,IP:$ip
EXT
openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
  -CAcreateserial -days 30 -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.pem" 2>/dev/null
rm -f "$dir/$name.csr" "$dir/$name.ext"
chmod 644 "$dir/ca.pem" "$dir/$name.pem"

#!/usr/bin/env bash
# Makes a throwaway PKI for the TLS tests, at test time (no key is committed):
#   make_test_pki.sh DIR PREFIX
# writes DIR/PREFIX-ca.{crt,key} (a CA), DIR/PREFIX-server.{crt,key} (for
# localhost and 127.0.0.1) and DIR/PREFIX-client.{crt,key} (client auth), all
# P-256, valid for two days. Two prefixes give two unrelated CAs.
set -euo pipefail
dir=$1 p=$2
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key "$p-ca.key"
openssl req -x509 -new -key "$p-ca.key" -out "$p-ca.crt" -days 2 -subj "/CN=$p test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
leaf() {  # name subject extensions
  key "$p-$1.key"
  openssl req -new -key "$p-$1.key" -out "$p-$1.csr" -subj "/CN=$2" 2>/dev/null
  printf '%s\n' "$3" > "$p-$1.ext"
  openssl x509 -req -in "$p-$1.csr" -CA "$p-ca.crt" -CAkey "$p-ca.key" -CAcreateserial -days 2 \
    -extfile "$p-$1.ext" -out "$p-$1.crt" 2>/dev/null
  rm -f "$p-$1.csr" "$p-$1.ext"
}
leaf server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
leaf client seer-test-client "extendedKeyUsage=clientAuth"

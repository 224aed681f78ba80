#!/usr/bin/env bash
# Makes a CA and one broker certificate signed by it, for a Kafka broker with TLS listeners.
#
#   make-certs.sh DIR NAME SUBJECT_CN SAN
#   e.g. make-certs.sh .kafka/secure broker kafka-local-broker "IP:127.0.0.1,DNS:localhost"
#
# Writes into DIR (created mode 700):
#   ca.pem           the CA certificate: what clients pass as --ssl-cafile (mode 644)
#   NAME.pem         the broker certificate, for reference (mode 644)
#   NAME.p12         PKCS12 key store: the broker's key and certificate chain (mode 600)
#   NAME.p12.pass    its random password (mode 600)
# The private keys exist only inside NAME.p12: the CA key is deleted once it has signed (a new broker
# gets a new CA), so nobody can mint more certificates from these files. Needs only openssl.
set -euo pipefail

[ $# -eq 4 ] || { echo "usage: $0 DIR NAME SUBJECT_CN SAN" >&2; exit 2; }
DIR=$1 NAME=$2 CN=$3 SAN=$4
command -v openssl >/dev/null 2>&1 || { echo "make-certs.sh: openssl is needed (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$DIR"
chmod 700 "$DIR"
cd "$DIR"
umask 077
trap 'rm -f ca.key ca.srl "$NAME.key" "$NAME.csr" "$NAME.ext"' EXIT
out=$({
  openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 825 -subj "/CN=$CN CA" -keyout ca.key -out ca.pem \
  && openssl req -newkey rsa:2048 -sha256 -nodes -subj "/CN=$CN" -keyout "$NAME.key" -out "$NAME.csr" \
  && printf '%s\n' "subjectAltName=$SAN" "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
       "extendedKeyUsage=serverAuth,clientAuth" >"$NAME.ext" \
  && openssl x509 -req -in "$NAME.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 -sha256 \
       -extfile "$NAME.ext" -out "$NAME.pem" \
  && openssl rand -hex 24 >"$NAME.p12.pass" \
  && STORE_PASS=$(cat "$NAME.p12.pass") openssl pkcs12 -export -name "$NAME" -in "$NAME.pem" -inkey "$NAME.key" \
       -certfile ca.pem -passout env:STORE_PASS -out "$NAME.p12"
} 2>&1) || { echo "$out" >&2; echo "make-certs.sh: openssl failed" >&2; exit 1; }
chmod 644 ca.pem "$NAME.pem"

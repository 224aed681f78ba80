#!/usr/bin/env bash
# Secrets of the secured compose stack (docker-compose.secure.yml): a CA and the Kafka broker's key store
# (deploy/make-certs.sh; the certificate names kafka, localhost and 127.0.0.1) and one random SCRAM-SHA-512
# password per user: admin (super user), streamer (serve), producer (the load generator).
#
#   bash deploy/compose-secure/make-secrets.sh [DIR]     # default deploy/compose-secure/secrets (git-ignored)
#
# DIR is mode 700, so other users of this machine read nothing in it. The files themselves are mode 644:
# compose mounts file secrets with their host permissions, and the containers' users (Kafka's appuser,
# the streamer image's uid 10001) must read them. Already there: kept (FORCE=1 makes new ones; then also
# `docker compose ... down -v`, since the Kafka volume holds the users formatted with the old passwords).
# admin.properties (mode 600) is the admin's client config for the Kafka tools on the host (localhost:9094).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/secrets}
if [ -f "$OUT/kafka.p12" ] && [ "${FORCE:-0}" != 1 ]; then
  echo "make-secrets.sh: $OUT already holds the secrets; FORCE=1 to make new ones" >&2
  exit 0
fi
rm -rf "$OUT"
bash "$HERE/../make-certs.sh" "$OUT" kafka kafka "DNS:kafka,DNS:localhost,IP:127.0.0.1"
umask 077
for user in admin streamer producer; do
  openssl rand -hex 24 >"$OUT/$user.password"
done
cat >"$OUT/admin.properties" <<PROPS
# kafka-topics.sh --bootstrap-server localhost:9094 --command-config $OUT/admin.properties --list
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$OUT/admin.password")";
ssl.truststore.type=PEM
ssl.truststore.location=$OUT/ca.pem
PROPS
chmod 644 "$OUT"/{ca.pem,kafka.pem,kafka.p12,kafka.p12.pass,admin.password,streamer.password,producer.password}
echo "make-secrets.sh: secrets in $OUT" >&2

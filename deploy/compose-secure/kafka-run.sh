#!/usr/bin/env bash
# The Kafka container of the secured compose stack (docker-compose.secure.yml), in the apache/kafka image.
#
#   kafka-run.sh          (the container's command) write server.properties from the KAFKA_* environment
#                         (KAFKA_FOO_BAR -> foo.bar, ___ -> -, __ -> _, as the image does) and the secrets in
#                         /run/secrets; at the first start format the storage with the SCRAM-SHA-512 users;
#                         then run the broker
#   kafka-run.sh health   the health check: an ApiVersions round trip as the admin over TLS + SCRAM
#   kafka-run.sh format   only write the configuration and format the storage (tests run this outside Docker
#                         with KAFKA_SECRETS_DIR, KAFKA_RUN_DIR and KAFKA_LIBS pointing at local files)
#
# The passwords are read from /run/secrets; they go into files of mode 600 under /tmp/kafka-secure and, for
# the format tool, into an argument file (`java @file`), never onto a command line.
set -euo pipefail
SECRETS=${KAFKA_SECRETS_DIR:-/run/secrets}
CONF_DIR=${KAFKA_RUN_DIR:-/tmp/kafka-secure}
LIBS=${KAFKA_LIBS:-/opt/kafka/libs}
CONF=$CONF_DIR/server.properties
CLIENT=$CONF_DIR/admin.properties
DATA=${KAFKA_LOG_DIRS:-/var/lib/kafka/data}
SCRAM=org.apache.kafka.common.security.scram.ScramLoginModule

secret() { cat "$SECRETS/$1"; }

properties() {  # KAFKA_* variables as broker properties (not the launcher's own, nor this script's)
  local name value key
  while IFS='=' read -r name value; do
    case "$name" in
      KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_GC_LOG_OPTS | KAFKA_LOG4J_OPTS | KAFKA_JMX_OPTS \
        | KAFKA_SECRETS_DIR | KAFKA_RUN_DIR | KAFKA_LIBS) ;;
      KAFKA_*)
        key=$(printf '%s' "${name#KAFKA_}" | tr '[:upper:]' '[:lower:]' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
        echo "$key=$value" ;;
    esac
  done < <(env | sort)
}

write_config() {
  mkdir -p "$CONF_DIR"
  chmod 700 "$CONF_DIR"
  umask 077
  {
    echo "# Written by kafka-run.sh at each start from the environment and /run/secrets."
    properties
    echo "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$SCRAM required username=\"admin\" password=\"$(secret kafka_admin_password)\";"
    echo "listener.name.host.scram-sha-512.sasl.jaas.config=$SCRAM required;"
    echo "ssl.keystore.password=$(secret kafka_keystore_password)"
  } >"$CONF"
  cat >"$CLIENT" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$SCRAM required username="admin" password="$(secret kafka_admin_password)";
ssl.truststore.type=PEM
ssl.truststore.location=$SECRETS/kafka_ca
PROPS
}

format_once() {
  [ -f "$DATA/meta.properties" ] && return 0
  local id args=$CONF_DIR/format.args user
  id=${CLUSTER_ID:-$(java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)}
  {
    echo "kafka.tools.StorageTool format -t $id -c $CONF"
    for user in admin streamer producer; do
      printf -- '--add-scram\n"SCRAM-SHA-512=[name=%s,password=%s]"\n' "$user" "$(secret "kafka_${user}_password")"
    done
  } >"$args"
  local rc=0
  java -cp "$LIBS/*" @"$args" || rc=$?
  rm -f "$args"
  return "$rc"
}

case "${1:-run}" in
  run)
    write_config
    format_once
    exec /opt/kafka/bin/kafka-server-start.sh "$CONF" ;;
  format)
    write_config
    format_once ;;
  health)
    exec /opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server kafka:9092 --command-config "$CLIENT" >/dev/null ;;
  *) echo "usage: $0 [run|health]" >&2; exit 2 ;;
esac

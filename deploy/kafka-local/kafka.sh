#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller in one JVM) on loopback, for
# development and the integration tests. The jars come from Maven Central via pom.xml.
#
#   kafka.sh up       start in the background and wait until ready (no-op if already running)
#   kafka.sh down     stop (SIGTERM, wait, then SIGKILL); no-op if not running
#   kafka.sh status   exit 0 iff this checkout's broker is running and ready
#   kafka.sh reset    stop and delete the broker's data (topics, offsets)
#   kafka.sh fetch    (re)fetch the jars into deploy/kafka-local/lib if missing or stale
#   kafka.sh logs     print the end of the broker log
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), KAFKA_START_TIMEOUT (120 s),
# KAFKA_STOP_TIMEOUT (30 s), KAFKA_HEAP_OPTS (-Xmx512m -Xms128m), KAFKA_JVM_OPTS (G1, 20 ms pauses),
# KAFKA_LOCAL_DIR (<repo>/.kafka), KAFKA_SECURITY (plaintext | sasl_ssl, see below).
# Clients connect to 127.0.0.1:$KAFKA_PORT. Nothing listens on anything but 127.0.0.1.
#
# KAFKA_SECURITY=sasl_ssl: one SASL_SSL listener (TLS + SCRAM-SHA-512) for clients and the broker itself,
# ACLs enforced (StandardAuthorizer, nothing allowed without an ACL); the controller listener uses mutual
# TLS. At the first start (fresh data) it makes, under $KAFKA_LOCAL_DIR/secure (mode 700):
#   ca.pem          the CA that signed the broker's certificate: clients pass it as --ssl-cafile
#   users.env       (mode 600) the SCRAM users and their random passwords:
#                   STREAMER_SASL_USERNAME/_PASSWORD  may do only what `streamer serve` needs on its
#                                                     default topics/group (see secure_acls below)
#                   PRODUCER_SASL_USERNAME/_PASSWORD  may only write the input topic (`streamer produce`)
#                   ADMIN_SASL_USERNAME/_PASSWORD     super user (topics, ACLs, tests)
#   admin.properties (mode 600) client settings of the admin for the Kafka CLI tools (--command-config)
# The serve ACLs name the topics and group of the STREAMER_INPUT_TOPIC, STREAMER_OUTPUT_TOPIC,
# STREAMER_DLQ_TOPIC, STREAMER_GROUP_ID and STREAMER_CHANGELOG_TOPIC variables (default: serve's defaults).
# Its data lives in $KAFKA_LOCAL_DIR/secure/data; `reset` deletes it with the secrets.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LIB="$HERE/lib"
PORT=${KAFKA_PORT:-9092}
CPORT=${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}
STATE=${KAFKA_LOCAL_DIR:-$REPO/.kafka}
SECURITY=${KAFKA_SECURITY:-plaintext}
SECURE="$STATE/secure"
case "$SECURITY" in
  plaintext) DATA="$STATE/data" ;;
  sasl_ssl) DATA="$SECURE/data" ;;
  *) echo "kafka.sh: KAFKA_SECURITY=$SECURITY is unknown; expected plaintext (default) or sasl_ssl" >&2; exit 2 ;;
esac
CONF="$STATE/server.properties"
PIDFILE="$STATE/kafka.pid"
LOG="$STATE/kafka.log"
START_TIMEOUT=${KAFKA_START_TIMEOUT:-120}
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m}
JVM_OPTS=${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20}
READY_MARK='Kafka Server started'

say() { echo "kafka.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# --- jars ------------------------------------------------------------------------------------
pom_stamp() { sha256sum "$HERE/pom.xml" | cut -d' ' -f1; }

ensure_jars() {
  if [ -f "$LIB/.pom.sha256" ] && [ "$(cat "$LIB/.pom.sha256")" = "$(pom_stamp)" ] \
     && compgen -G "$LIB/kafka_2.13-*.jar" >/dev/null; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed to fetch the Kafka jars; install it (apt-get install maven) and retry"
  say "fetching the Kafka jars from Maven Central into $LIB ..."
  rm -rf "$LIB"
  local out
  out=$(cd "$HERE" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib 2>&1) \
    || { tail -n 40 <<<"$out" >&2; die "mvn dependency:copy-dependencies failed (is Maven Central reachable?)"; }
  pom_stamp >"$LIB/.pom.sha256"
}

check_java() {
  command -v java >/dev/null 2>&1 || die "Java 17+ is needed to run Kafka 4.x; install a JDK (apt-get install openjdk-17-jre-headless)"
  local v
  v=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [ "${v%%.*}" -ge 17 ] 2>/dev/null || die "Kafka 4.x needs Java 17 or newer; found Java ${v:-unknown}"
}

# --- process and readiness checks ------------------------------------------------------------
our_pid() {  # prints the pid of this checkout's broker if it is alive
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # Guard against pid reuse: the process must be a Kafka server on our config file.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $CONF" || return 1
  echo "$pid"
}

running_port() {  # the client port the running broker was configured with
  sed -n 's|^advertised.listeners=[A-Z_]*://127.0.0.1:||p' "$CONF" 2>/dev/null
}

running_security() {  # plaintext or sasl_ssl: how the running broker was configured
  if grep -q '^advertised.listeners=SASL_SSL://' "$CONF" 2>/dev/null; then echo sasl_ssl; else echo plaintext; fi
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Sends a Kafka ApiVersions v0 request and checks the reply carries our correlation id and
# error code 0: proves the broker's request path answers, not just that a port is open.
# size=18 | api_key=18 (ApiVersions) | version=0 | correlation_id=0x4B414641 | client_id="kafka.sh"
API_VERSIONS_REQUEST='\x00\x00\x00\x12\x00\x12\x00\x00\x4b\x41\x46\x41\x00\x08kafka.sh'
api_versions_ok() {
  timeout 5 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$PORT"' || exit 1
    printf "'"$API_VERSIONS_REQUEST"'" >&3
    reply=$(head -c 10 <&3 | od -An -tx1 | tr -d " \n")
    # 4-byte size, then correlation id 4b414641, then error_code 0000
    [ "${reply:8:12}" = "4b4146410000" ]
  ' 2>/dev/null
}

# The same over TLS, verifying the broker's certificate with our CA (ApiVersions needs no SASL login).
api_versions_tls_ok() {
  local reply
  reply=$({ printf "$API_VERSIONS_REQUEST"; sleep 3; } \
          | timeout 5 openssl s_client -quiet -connect "127.0.0.1:$PORT" -CAfile "$SECURE/ca.pem" \
              -verify_return_error -verify_ip 127.0.0.1 2>/dev/null | head -c 10 | od -An -tx1 | tr -d " \n")
  [ "${reply:8:12}" = "4b4146410000" ]
}

is_ready() {
  our_pid >/dev/null && grep -q "$READY_MARK" "$LOG" 2>/dev/null && port_open "$PORT" || return 1
  if [ "$(running_security)" = sasl_ssl ]; then api_versions_tls_ok; else api_versions_ok; fi
}

# --- config ------------------------------------------------------------------------------------
write_config() {
  mkdir -p "$STATE"
  rm -f "$CONF"
  (umask 077; write_listeners >"$CONF")  # sasl_ssl: holds the broker's own password and key store password
  cat >>"$CONF" <<EOF
log.dirs=$DATA

# Single node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
num.partitions=1

# Topics are created explicitly (admin client) with the partitions and configs the code needs;
# a typo in a topic name must fail, not silently create a 1-partition topic.
auto.create.topics.enable=false

# Small and fast for a 2-core machine.
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=1048577
log.cleaner.threads=1
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
EOF
}

write_listeners() {
  echo "# Generated by deploy/kafka-local/kafka.sh at each start; edit the script, not this file."
  cat <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
controller.listener.names=CONTROLLER
EOF
  if [ "$SECURITY" = plaintext ]; then
    cat <<EOF
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
EOF
    return
  fi
  cat <<EOF
# Clients and the broker itself: TLS + SCRAM-SHA-512. The controller: mutual TLS on loopback (the
# broker certificate's subject is a super user).
listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=SASL_SSL://127.0.0.1:$PORT
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(secret ADMIN_SASL_PASSWORD)";
listener.name.controller.ssl.client.auth=required
ssl.keystore.type=PKCS12
ssl.keystore.location=$SECURE/broker.p12
ssl.keystore.password=$(cat "$SECURE/broker.p12.pass")
ssl.truststore.type=PEM
ssl.truststore.location=$SECURE/ca.pem
ssl.enabled.protocols=TLSv1.3,TLSv1.2
# Nothing is allowed without an ACL; the admin (as which the broker logs in to itself) may do anything.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:CN=$BROKER_CN
EOF
}

# --- KAFKA_SECURITY=sasl_ssl: certificates, users and ACLs ----------------------------------------
BROKER_CN=kafka-local-broker  # its certificate's subject CN: the broker's principal on the controller listener
SERVE_USER=streamer
PRODUCER_USER=producer

secret() { sed -n "s/^$1=//p" "$SECURE/users.env"; }

# A CA, a broker certificate (127.0.0.1 and localhost) signed by it (deploy/make-certs.sh), and a random
# password per user. Made once per data directory: the SCRAM users go into the storage when it is formatted.
make_secrets() {
  [ -f "$DATA/meta.properties" ] && [ -f "$SECURE/users.env" ] && [ -f "$SECURE/broker.p12" ] && return 0
  rm -rf "$SECURE"
  say "making a CA, the broker certificate and the SCRAM users' passwords in $SECURE"
  bash "$HERE/../make-certs.sh" "$SECURE" broker "$BROKER_CN" "IP:127.0.0.1,DNS:localhost" \
    || die "making the certificates with openssl failed"
  (umask 077
   {
     echo "# SCRAM-SHA-512 users of the local broker on 127.0.0.1:$PORT (made by kafka.sh; random per broker)."
     echo "STREAMER_SASL_USERNAME=$SERVE_USER"
     echo "STREAMER_SASL_PASSWORD=$(openssl rand -hex 24)"
     echo "PRODUCER_SASL_USERNAME=$PRODUCER_USER"
     echo "PRODUCER_SASL_PASSWORD=$(openssl rand -hex 24)"
     echo "ADMIN_SASL_USERNAME=admin"
     echo "ADMIN_SASL_PASSWORD=$(openssl rand -hex 24)"
   } >"$SECURE/users.env"
   cat >"$SECURE/admin.properties" <<EOF
# The admin's client settings for the Kafka tools: kafka-topics.sh --command-config $SECURE/admin.properties
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(secret ADMIN_SASL_PASSWORD)";
ssl.truststore.type=PEM
ssl.truststore.location=$SECURE/ca.pem
EOF
  )
}

# The format tool's --add-scram arguments, for a mode-600 argument file (`java @file`): no password
# ever appears on a command line (ps).
scram_args() {
  local user var
  for user in admin "$SERVE_USER" "$PRODUCER_USER"; do
    case "$user" in admin) var=ADMIN ;; "$SERVE_USER") var=STREAMER ;; *) var=PRODUCER ;; esac
    printf -- '--add-scram\n"SCRAM-SHA-512=[name=%s,password=%s]"\n' "$user" "$(secret "${var}_SASL_PASSWORD")"
  done
}

# What `streamer serve` needs on its topics, group and transactional ids (README, "Security"), and the
# producer's right to write the input topic. Once per data directory, when the broker is first ready.
secure_acls() {
  [ -f "$SECURE/acls.done" ] && return 0
  local input=${STREAMER_INPUT_TOPIC:-events} output=${STREAMER_OUTPUT_TOPIC:-predictions}
  local dlq=${STREAMER_DLQ_TOPIC:-events.dlq} group=${STREAMER_GROUP_ID:-streamer}
  local changelog=${STREAMER_CHANGELOG_TOPIC:-${STREAMER_GROUP_ID:-streamer}-${STREAMER_INPUT_TOPIC:-events}-changelog}
  local serve=(--allow-principal "User:$SERVE_USER") pids=() pid rc=0
  say "ACLs: $SERVE_USER serves $input -> $output, $dlq, $changelog (group $group); $PRODUCER_USER writes $input"
  acl_add "${serve[@]}" --operation Read --operation Describe --topic "$input" & pids+=($!)
  acl_add "${serve[@]}" --operation Write --operation Describe --operation DescribeConfigs \
    --topic "$output" --topic "$dlq" --topic "$changelog" & pids+=($!)
  acl_add "${serve[@]}" --operation Read --topic "$changelog" --group "$group" & pids+=($!)
  acl_add "${serve[@]}" --operation Write --operation Describe --resource-pattern-type prefixed \
    --transactional-id "streamer-$group-$input-" & pids+=($!)
  acl_add --allow-principal "User:$PRODUCER_USER" --operation Write --operation Describe --topic "$input" & pids+=($!)
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  [ "$rc" = 0 ] || { tail -n 20 "$STATE/acls.log" >&2; die "creating the ACLs failed; see $STATE/acls.log"; }
  touch "$SECURE/acls.done"
}

acl_add() {
  java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
    -cp "$LIB/*" org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$PORT" \
    --command-config "$SECURE/admin.properties" --add --force "$@" >>"$STATE/acls.log" 2>&1
}

format_storage() {
  [ -f "$DATA/meta.properties" ] && return 0
  # KRaft cluster id: a random UUID in URL-safe base64 without padding (22 characters).
  local hex id
  hex=$(tr -d '-' </proc/sys/kernel/random/uuid)
  id=$(printf "$(sed 's/../\\x&/g' <<<"$hex")" | base64 | tr '+/' '-_' | tr -d '=\n')
  say "formatting KRaft storage in $DATA (cluster id $id)"
  # Static quorum (controller.quorum.voters), so no --standalone.
  local args="$STATE/format.args" rc=0
  (umask 077
   echo "kafka.tools.StorageTool format --cluster-id=$id -c \"$CONF\"" >"$args"  # (= : an id may start with -)
   if [ "$SECURITY" = sasl_ssl ]; then scram_args >>"$args"; fi)
  java -cp "$LIB/*" @"$args" >>"$STATE/format.log" 2>&1 || rc=$?
  rm -f "$args"
  [ "$rc" = 0 ] || { tail -n 20 "$STATE/format.log" >&2; die "formatting the storage failed"; }
}

# --- commands --------------------------------------------------------------------------------
cmd_up() {
  if is_ready && [ "$(running_port)" = "$PORT" ] && [ "$(running_security)" = "$SECURITY" ]; then
    if [ "$SECURITY" = sasl_ssl ]; then secure_acls; fi
    say "already running and ready on 127.0.0.1:$PORT (pid $(our_pid), $SECURITY)"
    return 0
  fi
  local pid
  if pid=$(our_pid); then
    [ "$(running_port)" = "$PORT" ] \
      || die "this checkout's broker (pid $pid) already runs on port $(running_port), not $PORT; run kafka.sh down first"
    [ "$(running_security)" = "$SECURITY" ] \
      || die "this checkout's broker (pid $pid) runs with KAFKA_SECURITY=$(running_security), not $SECURITY; run kafka.sh down first"
    say "broker (pid $pid) is running but not ready; waiting for it"
  else
    local p
    for p in "$PORT" "$CPORT"; do
      port_open "$p" && die "port 127.0.0.1:$p is already in use by another process (another Kafka?); stop it or set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
    done
    check_java
    ensure_jars
    if [ "$SECURITY" = sasl_ssl ]; then make_secrets; fi
    write_config
    format_storage
    : >"$LOG"
    # setsid: the broker outlives the calling shell/make and is not hit by its Ctrl-C.
    # The inner bash writes its own pid, then execs java, so the pid file names the JVM.
    # shellcheck disable=SC2086
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
      java $HEAP_OPTS $JVM_OPTS -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
      -cp "$LIB/*" kafka.Kafka "$CONF" </dev/null >>"$LOG" 2>&1 9>&- &
    say "starting on 127.0.0.1:$PORT (controller 127.0.0.1:$CPORT), log $LOG"
  fi
  local start=$SECONDS
  while ! is_ready; do
    if ! our_pid >/dev/null && [ $((SECONDS - start)) -ge 2 ]; then
      tail -n 30 "$LOG" >&2 || true
      die "the broker exited during startup; see $LOG"
    fi
    if [ $((SECONDS - start)) -ge "$START_TIMEOUT" ]; then
      tail -n 30 "$LOG" >&2 || true
      die "the broker was not ready after ${START_TIMEOUT}s; see $LOG (stop it with: kafka.sh down)"
    fi
    sleep 0.5
  done
  if [ "$SECURITY" = sasl_ssl ]; then secure_acls; fi
  say "ready on 127.0.0.1:$PORT (pid $(our_pid), $SECURITY) after $((SECONDS - start))s"
  if [ "$SECURITY" = sasl_ssl ]; then say "CA: $SECURE/ca.pem; users and passwords: $SECURE/users.env (mode 600)"; fi
}

cmd_down() {
  local pid
  if ! pid=$(our_pid); then
    rm -f "$PIDFILE"
    say "not running"
    return 0
  fi
  say "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "still running after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$PIDFILE"
  say "stopped"
}

cmd_status() {
  if is_ready; then
    echo "running and ready on 127.0.0.1:$PORT (pid $(our_pid))"
    return 0
  elif our_pid >/dev/null && [ "$(running_port)" != "$PORT" ]; then
    echo "running (pid $(our_pid)) on 127.0.0.1:$(running_port), not on the requested port $PORT"
  elif our_pid >/dev/null; then
    echo "running (pid $(our_pid)) but not ready on 127.0.0.1:$PORT"
  else
    echo "not running"
  fi
  return 1
}

# Serialise up/down/reset/fetch: two `make test` runs starting at once must not start two JVMs.
lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/lock"
  flock -w "$((START_TIMEOUT + STOP_TIMEOUT + 300))" 9 || die "could not lock $STATE/lock"
}

case "${1:-}" in
  up) lock; cmd_up ;;
  down | stop) lock; cmd_down ;;
  status) cmd_status ;;
  reset) lock; cmd_down; rm -rf "$STATE/data" "$SECURE" "$STATE/format.log" "$STATE/acls.log"; say "data and secrets deleted" ;;
  fetch) lock; ensure_jars ;;
  logs) tail -n "${2:-50}" "$LOG" ;;
  *) echo "usage: $0 up|down|status|reset|fetch|logs [N]" >&2; exit 2 ;;
esac

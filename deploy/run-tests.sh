#!/usr/bin/env bash
# Runs the whole test suite. Starts the local Apache Kafka broker unless KAFKA_BOOTSTRAP_SERVERS
# names one, and stops it again afterwards if this script started it.
set -uo pipefail
PY=${1:-.venv/bin/python}
cd "$(dirname "$0")/.."
started=0
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  if ! bash deploy/kafka-local/kafka.sh status >/dev/null 2>&1; then
    bash deploy/kafka-local/kafka.sh up || { echo "could not start the local Kafka broker" >&2; exit 1; }
    started=1
  fi
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${KAFKA_PORT:-9092}"
fi
"$PY" -m pytest -q -ra
rc=$?
[ "$started" = 1 ] && bash deploy/kafka-local/kafka.sh down
exit $rc

# Everything a fresh clone needs: `make demo` and `make test` create/refresh .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
KAFKA_PORT ?= 9092
export KAFKA_PORT

.PHONY: install demo test test-unit kafka-up kafka-down prometheus kcat bench bench-kafka clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,confluent]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m streamer demo

# Unit tests only (no broker, no Prometheus server).
test-unit: install
	$(PY) -m pytest -q -m "not kafka"

# Everything: starts the local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS is set) and
# installs the Prometheus server and kcat for the integration tests, then stops what it started.
test: install prometheus kcat
	@bash deploy/run-tests.sh $(PY)

kafka-up:
	@bash deploy/kafka-local/kafka.sh up

kafka-down:
	@bash deploy/kafka-local/kafka.sh down

# Debian's prometheus package gives the server and promtool.
prometheus:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
	   && (systemctl disable --now prometheus 2>/dev/null; service prometheus stop 2>/dev/null; pkill -x prometheus 2>/dev/null; true))

# Debian's kcat: the hostile-input and routing tests produce raw bytes with it, as a Kafka user would;
# openssl makes the secured test broker's certificates (deploy/make-certs.sh).
kcat:
	@command -v kcat >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kcat openssl >/dev/null)

bench: install
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_engine.py

# Kafka serving with both clients and the Quix Streams peer (its own virtualenv, .bench-venv), on the
# local broker (started here unless KAFKA_BOOTSTRAP_SERVERS is set). BENCH_ARGS: e.g. --rounds 3.
bench-kafka: install
	$(PY) benchmarks/bench_kafka.py --make-peer-venv
	@if [ -z "$${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then bash deploy/kafka-local/kafka.sh up; fi
	KAFKA_BOOTSTRAP_SERVERS=$${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$(KAFKA_PORT)} $(PY) benchmarks/bench_kafka.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .bench-venv runs artifacts .kafka .pytest_cache

"""librdkafka basics shared by the confluent-kafka clients (`streamer.kafka.confluent`,
`streamer.kafka.confluent_admin`): its error codes and their translation into `streamer.kafka.client`
errors, the settings of each client (librdkafka property names, made from a `Connection` and a
`ClientTuning`), and `_Events`, the error events and statistics of one client.

librdkafka retries brokers that are down by itself. Its error events (``_ALL_BROKERS_DOWN``,
``_TRANSPORT``, ``_RESOLVE``...) and its statistics (every ``statistics.interval.ms``: each broker's
connection state, each partition's high watermark / last stable offset, the topic's partitions) feed the
consumer's ``connections()``, ``highwater()`` and ``partition_count()``, which the service turns into
``streamer_kafka_connections``, outage counts, ``streamer_kafka_consumer_lag_records`` and the topology
watch. An error that retrying cannot fix is explained (`Clients.explain`: a wrong password, a missing
ACL, TLS) and raised as a one-line UserError, other fatal errors (a fenced static member) as
`FatalClientError`, from the next call on the main thread. librdkafka's own log goes to the Python logger
``kafka.librdkafka`` (``--kafka-log-level``; DEBUG adds its debug contexts), where the secrets filter of
`streamer.kafka.secrets` sees it.
"""

from __future__ import annotations

import json
import logging
import time

from confluent_kafka import KafkaError, KafkaException

from streamer.errors import UserError
from streamer.kafka.client import ClientError, ClientTimeout, FatalClientError, Fenced

log = logging.getLogger("streamer.serve")
rdkafka_log = logging.getLogger("kafka.librdkafka")

# Errors that retrying cannot fix (serve stops with one line).
FATAL_CODES = frozenset({
    KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError.UNSUPPORTED_SASL_MECHANISM,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.UNSUPPORTED_VERSION, KafkaError._UNSUPPORTED_FEATURE, KafkaError._INVALID_ARG,
    KafkaError.FENCED_INSTANCE_ID, KafkaError._FATAL,
})
# Connectivity: librdkafka reconnects by itself; the service sees these as connections() == 0.
CONNECTION_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})



def translate(err, kind: str, what: str = "", topic: str | None = None) -> ClientError:
    """A confluent-kafka KafkaError (or KafkaException) as a `ClientError` counted under `kind`; its `cause` is
    the KafkaError (what `streamer.kafka.failures` reads), `topic` the topic it is about when known."""
    if isinstance(err, KafkaException) and err.args and isinstance(err.args[0], KafkaError):
        err = err.args[0]
    if not isinstance(err, KafkaError):
        return ClientError(f"{what}{type(err).__name__}: {err}", kind=kind, cause=err, topic=topic)
    name = err.name()
    message = f"{what}{name}: {err.str()}"
    kw = {"kind": kind, "name": name, "cause": err, "topic": topic}
    if _fenced(err):
        return Fenced(message, **kw)
    if err.code() in FATAL_CODES or err.fatal():
        return FatalClientError(message, **kw)
    if err.code() in (KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT) or err.code() in CONNECTION_CODES:
        return ClientTimeout(message, **kw)
    return ClientError(message, **kw)


def _fenced(err: KafkaError) -> bool:
    """A static member fenced by another with its group.instance.id: FENCED_INSTANCE_ID, or the consumer's
    _FATAL error naming it (librdkafka reports the fatal error of a consumer that way)."""
    return err.code() == KafkaError.FENCED_INSTANCE_ID or (err.code() == KafkaError._FATAL
                                                           and "group.instance.id" in err.str())


# --------------------------------------------------------------------------- settings


# --kafka-log-level DEBUG: what librdkafka says about connections, security and its configuration (it prints
# secrets as [redacted]; the log filter of streamer.kafka.secrets masks them in every record anyway)
DEBUG_CONTEXTS = "generic,broker,security,conf"


def _common(conn, t) -> dict:
    c = conn.librdkafka_config()
    if t.client_debug:
        c.update({"debug": DEBUG_CONTEXTS, "log_level": 7})
    return c


def consumer_config(conn, t) -> dict:
    c = {**_common(conn, t), "group.id": t.group_id, "enable.auto.commit": False,
         "enable.auto.offset.store": False, "auto.offset.reset": t.auto_offset_reset,
         "session.timeout.ms": t.session_timeout_ms, "heartbeat.interval.ms": t.heartbeat_interval_ms,
         "max.poll.interval.ms": t.max_poll_interval_ms,
         "isolation.level": "read_committed" if t.exactly_once else "read_uncommitted",
         "partition.assignment.strategy": "cooperative-sticky", "allow.auto.create.topics": False,
         "max.partition.fetch.bytes": 4 << 20, "statistics.interval.ms": t.statistics_interval_ms,
         "topic.metadata.refresh.interval.ms": t.metadata_max_age_ms}
    if t.group_instance_id:
        c["group.instance.id"] = t.group_instance_id
    return c


def producer_config(conn, t) -> dict:
    timeout = t.delivery_timeout_ms
    if t.exactly_once:  # librdkafka refuses message.timeout.ms > transaction.timeout.ms
        timeout = min(timeout, t.transaction_timeout_ms)
    c = {**_common(conn, t), "acks": "all", "enable.idempotence": True, "linger.ms": t.linger_ms,
         "batch.size": t.batch_bytes, "compression.type": t.compression, "message.timeout.ms": timeout,
         "request.timeout.ms": max(1000, min(t.request_timeout_ms, timeout - t.linger_ms - 1000)),
         "message.max.bytes": t.max_request_size, "queue.buffering.max.messages": 1_000_000,
         "partitioner": "murmur2_random", "topic.metadata.refresh.interval.ms": t.metadata_max_age_ms}
    if t.exactly_once:
        c.update({"transactional.id": t.transactional_id, "transaction.timeout.ms": t.transaction_timeout_ms})
    return c


def reader_config(conn, t) -> dict:
    return {**_common(conn, t), "client.id": conn.client_id + "-restore",
            # required by the client, which looks its coordinator up (so a group without an ACL would fail): serve's
            # own group, on which it has Read; never joined (assign only), nothing committed
            "group.id": t.group_id,
            "enable.auto.commit": False, "enable.auto.offset.store": False, "enable.partition.eof": True,
            "isolation.level": "read_committed", "allow.auto.create.topics": False,
            "max.partition.fetch.bytes": 16 << 20, "fetch.max.bytes": 64 << 20,
            "fetch.wait.max.ms": 20}  # the end of a partition is known from a fetch answer: do not let it wait


def admin_config(conn, t) -> dict:
    return {**_common(conn, t), "client.id": conn.client_id + "-admin",
            "socket.timeout.ms": t.request_timeout_ms}


PROBE_EVERY_S = 5.0  # at start-up, connect to the broker at most this often to say why librdkafka cannot
DOWN_AFTER_S = 5.0  # an admin request gives up (to be retried) when every broker stayed down this long


class _Events:
    """librdkafka's error events and statistics of one client (callbacks on the polling thread).

    `clients` (the `ConfluentClients`) explains an error that retrying cannot fix (`Clients.explain`: a wrong
    password, a missing ACL, TLS): the next call on the main thread raises it as a UserError (one line).
    While the service starts (``clients.probing``) a transport error may be probed: one connection the
    client's way says whether it is TLS or authentication rather than a broker that is down."""

    def __init__(self, metrics=None, topic: str | None = None, committed_reads: bool = False, clients=None):
        self.metrics = metrics
        self.topic = topic
        self.clients = clients
        self.fatal: Exception | None = None
        self.down = False  # _ALL_BROKERS_DOWN seen, and no statistics since that show a broker up
        self.connections: int | None = None
        self.highwater: dict[int, int] = {}
        self.partitions: int | None = None  # the topic's partition count in the client's metadata
        self._offset_field = "ls_offset" if committed_reads else "hi_offset"
        self._last_warning: dict[int, float] = {}
        self._probed = -1e9

    def config(self, stats: bool) -> dict:
        c = {"error_cb": self.on_error, "logger": rdkafka_log}
        if stats:
            c["stats_cb"] = self.on_stats
        return c

    def on_error(self, err: KafkaError) -> None:
        code = err.code()
        line = self._explain(err)
        if line:
            if self.fatal is None:
                self.fatal = UserError(line)
            return
        if code in CONNECTION_CODES:
            if code == KafkaError._ALL_BROKERS_DOWN:
                self.down = True
            rdkafka_log.debug("%s: %s", err.name(), err.str())
            return
        if code in FATAL_CODES or err.fatal():
            if self.fatal is None:
                self.fatal = translate(err, "connect")
            return
        now = time.monotonic()
        if now - self._last_warning.get(code, -1e9) >= 10.0:  # at most one line per error per 10 s
            self._last_warning[code] = now
            log.warning("Kafka client error (%s: %s); librdkafka retries", err.name(), err.str())
        if self.metrics is not None:
            self.metrics.error("poll")

    def _explain(self, err: KafkaError) -> str | None:
        if self.clients is None:
            return None
        now = time.monotonic()
        probe = self.clients.probing and now - self._probed >= PROBE_EVERY_S
        if probe:
            self._probed = now
        return self.clients.explain(err, probe=probe)

    def on_stats(self, text: str) -> None:
        try:
            stats = json.loads(text)
        except ValueError:
            return
        brokers = stats.get("brokers", {}).values()
        up = sum(1 for b in brokers if b.get("source") != "logical" and b.get("state") == "UP")
        self.connections = up
        if up:
            self.down = False
        parts = stats.get("topics", {}).get(self.topic, {}).get("partitions", {}) if self.topic else {}
        field = self._offset_field
        self.highwater = {int(p): v[field] for p, v in parts.items() if int(p) >= 0 and v.get(field, -1) >= 0}
        self.partitions = sum(1 for p in parts if int(p) >= 0) or None

    def raise_fatal(self) -> None:
        if self.fatal is not None:
            raise self.fatal

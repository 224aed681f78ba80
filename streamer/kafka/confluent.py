"""The confluent-kafka (librdkafka) implementation of `streamer.kafka.client` (``--kafka-client confluent``).

- `ConfluentClients`: the factory; `consumer_config`/`producer_config`/`reader_config` are the settings
  (librdkafka property names) made from a `Connection` and a `ClientTuning`.
- `ConfluentConsumer`: the group member, with the cooperative-sticky assignor: a rebalance revokes only
  the partitions that move and assigns only the new ones (``incremental_assign``/``incremental_unassign``),
  so the others keep being processed through it. librdkafka runs the rebalance callbacks on the calling
  thread, inside ``consume``/``close``; the revocation's offset commit is a synchronous ``commit`` there.
  A batch is ``consume(n, 0)`` (what is already fetched) or, when nothing is, one ``poll(timeout)``
  followed by ``consume(n - 1, 0)``: librdkafka's ``consume(n, timeout)`` would wait the whole timeout
  to fill a batch. Static membership (``group.instance.id``) when the tuning names one.
- `ConfluentProducer`: ``produce`` with a delivery callback per record, served by ``poll(0)`` (the serve
  loop calls it every round) and ``flush``; idempotent (``enable.idempotence``) under at-least-once too,
  transactional under exactly-once (``transactional.id``; ``message.timeout.ms`` is capped at
  ``transaction.timeout.ms``, as librdkafka requires). One lock serves the callbacks, so that the counts
  they keep are never updated from two threads at once. Keys are partitioned with ``murmur2_random``,
  the Java clients' (and kafka-python's) partitioner, so a key lands where it would with them.
- `ConfluentReader`: a consumer without a group subscription that reads changelog partitions from the
  beginning until librdkafka reports their end (``enable.partition.eof``; read_committed: the last
  stable offset).
- `ConfluentAdmin`: ``list_topics``, ``create_topics``, ``describe_configs``.

librdkafka retries brokers that are down by itself. Its error events (``_ALL_BROKERS_DOWN``,
``_TRANSPORT``, ``_RESOLVE``...) and its statistics (every ``statistics.interval.ms``: each broker's
connection state, each partition's high watermark / last stable offset) feed ``connections()`` and
``highwater()``, which the service turns into ``streamer_kafka_connections``, outage counts and
``streamer_kafka_consumer_lag_records``. Fatal errors (authentication, authorisation, a fenced static
member) are raised as `FatalClientError` from the next call on the main thread. librdkafka's own log
goes to the Python logger ``kafka.librdkafka`` (``--kafka-log-level``).
"""

from __future__ import annotations

import json
import logging
import threading
import time

import confluent_kafka as ck
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from streamer.errors import UserError
from streamer.kafka.client import (Batch, ClientError, Clients, ClientTimeout, DeliveryError, FatalClientError, Fenced,
                                   TopicSpec)

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

_error, _partition, _offset = Message.error, Message.partition, Message.offset
_key, _value = Message.key, Message.value
_NO_ERRORS = {type(None)}


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


# --------------------------------------------------------------------------- factory


class ConfluentClients(Clients):
    name = "confluent"

    def consumer(self) -> "ConfluentConsumer":
        t = self.tuning
        return ConfluentConsumer(consumer_config(self.connection, t), self.topic, t.auto_offset_reset,
                                 _Events(self.metrics, self.topic, committed_reads=t.exactly_once, clients=self),
                                 leave=self._leave_group if t.group_instance_id else None)

    def producer(self) -> "ConfluentProducer":
        return ConfluentProducer(producer_config(self.connection, self.tuning), self.tuning.exactly_once,
                                 self.tuning.request_timeout_ms / 1000, _Events(self.metrics, clients=self))

    def reader(self) -> "ConfluentReader":
        return ConfluentReader(reader_config(self.connection, self.tuning), _Events(clients=self))

    def admin(self) -> "ConfluentAdmin":
        return ConfluentAdmin(admin_config(self.connection, self.tuning), self.tuning.request_timeout_ms / 1000,
                              _Events(clients=self))

    def _leave_group(self) -> None:
        """librdkafka, like the Java client, never sends LeaveGroup for a static member: remove it from the group
        as an admin would (KIP-345's removeMembersFromConsumerGroup; `streamer.kafka.membership`)."""
        from streamer.kafka import membership

        membership.remove_static_member(self.connection, self.tuning.group_id, self.tuning.group_instance_id,
                                        timeout_ms=min(self.tuning.request_timeout_ms, 10000))


# --------------------------------------------------------------------------- consumer


class ConfluentConsumer:
    def __init__(self, config: dict, topic: str, auto_offset_reset: str = "earliest", events: _Events | None = None,
                 leave=None):
        """`leave()`: removes this static member from the group after close(leave=True) (None: dynamic)."""
        self.topic = topic
        self._reset = ck.OFFSET_END if auto_offset_reset == "latest" else ck.OFFSET_BEGINNING
        self._events = events or _Events(topic=topic)
        self._leave = leave
        self._joined = False  # a member of the group once (only then is there a membership to leave)
        self._listener = None
        self._assignment: set[int] = set()
        self._paused: set[int] = set()
        try:
            self.raw = ck.Consumer({**config, **self._events.config(stats=True)})
        except (KafkaException, ValueError) as exc:
            raise translate(exc, "connect", "creating the consumer: ") from exc

    def _tps(self, partitions, offset=None) -> list:
        if offset is None:
            return [TopicPartition(self.topic, p) for p in partitions]
        return [TopicPartition(self.topic, p, offset) for p in partitions]

    def _parts(self, tps) -> set[int]:
        return {tp.partition for tp in tps if tp.topic == self.topic}

    # rebalance callbacks: on this thread, inside consume()/poll()/close()

    def subscribe(self, listener) -> None:
        self._listener = listener
        try:
            self.raw.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_lost)
        except KafkaException as exc:
            raise translate(exc, "connect") from exc

    def _on_assign(self, consumer, tps) -> None:
        self._joined = True
        self.raw.incremental_assign(tps)
        self._assignment |= self._parts(tps)
        self._listener.assigned(set(self._assignment))

    def _on_revoke(self, consumer, tps) -> None:
        parts = self._parts(tps)
        offsets = self._listener.revoke_checkpoint(parts)
        if offsets is not None:
            ok = False
            if offsets:
                try:
                    self.commit(offsets, 30.0)
                    ok = True
                except ClientError as exc:  # the events are replayed and deduplicated
                    log.warning("offset commit on revocation failed (%s)", exc)
            self._listener.revoke_done(offsets, ok)
        self._unassign(tps, parts)
        self._listener.unassigned(parts)

    def _on_lost(self, consumer, tps) -> None:
        parts = self._parts(tps)
        self._listener.lost(parts)
        self._unassign(tps, parts)

    def _unassign(self, tps, parts: set[int]) -> None:
        try:
            self.raw.incremental_unassign(tps)
        except KafkaException as exc:
            log.debug("incremental_unassign: %s", exc)
        self._assignment -= parts
        self._paused -= parts

    # the loop

    def consume(self, max_records: int, timeout_s: float) -> Batch | None:
        raw = self.raw
        try:
            msgs = raw.consume(max_records, 0)
            if not msgs:
                first = raw.poll(timeout_s)
                if first is None:
                    self._events.raise_fatal()
                    return None
                msgs = [first] + raw.consume(max_records - 1, 0) if max_records > 1 else [first]
        except KafkaException as exc:
            raise translate(exc, "poll") from exc
        self._events.raise_fatal()
        errors = list(map(_error, msgs))
        # (by type: KafkaError == None leaves a TypeError pending in confluent-kafka 2.x, which the next C call
        # reports as a SystemError)
        if set(map(type, errors)) != _NO_ERRORS:
            msgs = self._drop_errors(msgs, errors)
            if not msgs:
                return None
        return Batch(list(map(_partition, msgs)), list(map(_offset, msgs)), list(map(_key, msgs)),
                     list(map(_value, msgs)))

    def _drop_errors(self, msgs: list, errors: list) -> list:
        for err in errors:
            if err is None or err.code() == KafkaError._PARTITION_EOF:
                continue
            if err.code() in FATAL_CODES or err.fatal():
                raise translate(err, "poll")
            self._events.on_error(err)
        return [m for m, e in zip(msgs, errors) if e is None]

    def commit(self, offsets: dict[int, int], timeout_s: float) -> None:
        tps = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        try:
            result = self.raw.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise translate(exc, "commit") from exc
        for tp in result or ():
            if tp.error is not None:
                raise translate(tp.error, "commit", f"committing partition {tp.partition}: ")

    def rewind(self, partitions: list[int]) -> None:
        if not partitions:
            return
        try:
            committed = self.raw.committed(self._tps(partitions), timeout=30)
        except KafkaException as exc:
            raise translate(exc, "poll") from exc
        for tp in committed:
            self.seek(tp.partition, tp.offset if tp.offset >= 0 else self._reset)

    def seek(self, partition: int, offset: int) -> None:
        tp = TopicPartition(self.topic, partition, offset)
        try:
            self.raw.seek(tp)
        except KafkaException:  # not fetching yet (just assigned): assign it again at that offset
            try:
                self.raw.incremental_unassign([TopicPartition(self.topic, partition)])
                self.raw.incremental_assign([tp])
                if partition in self._paused:
                    self.raw.pause([TopicPartition(self.topic, partition)])
            except KafkaException as exc:
                raise translate(exc, "poll", f"seeking partition {partition}: ") from exc

    def pause(self, partitions) -> None:
        if partitions:
            self.raw.pause(self._tps(partitions))
            self._paused |= set(partitions)

    def resume(self, partitions) -> None:
        if partitions:
            self.raw.resume(self._tps(partitions))
            self._paused -= set(partitions)

    def highwater(self, partition: int) -> int | None:
        return self._events.highwater.get(partition)

    def group_metadata(self):
        return self.raw.consumer_group_metadata()

    def connections(self) -> int | None:
        return 0 if self._events.down else self._events.connections

    def group_stable(self) -> bool | None:
        return None  # librdkafka manages its membership itself: nothing to watch

    def partition_count(self) -> int | None:
        """From the statistics (each second: the metadata, refreshed every metadata_max_age_ms); until the first
        arrive, from one metadata request."""
        if self._events.partitions is None:
            try:
                t = self.raw.list_topics(self.topic, timeout=5).topics.get(self.topic)
            except KafkaException as exc:
                raise translate(exc, "poll", f"reading the metadata of {self.topic}: ") from exc
            if t is not None and t.error is None and t.partitions:
                self._events.partitions = len(t.partitions)
        return self._events.partitions

    def close(self, leave: bool = False) -> None:
        """`leave`: a static member is removed from the group too (librdkafka never sends LeaveGroup for one)."""
        try:
            self.raw.close()
        except (KafkaException, RuntimeError) as exc:
            raise translate(exc, "poll") from exc
        if leave and self._leave is not None and self._joined:
            try:
                self._leave()
            except Exception as exc:  # noqa: BLE001 - the partitions then move after the session timeout
                log.warning("leaving the group as a static member failed (%s: %s); its partitions move after the "
                            "session timeout", type(exc).__name__, exc)


# --------------------------------------------------------------------------- producer


class ConfluentProducer:
    background_sends = False  # ~1 us per record: a checkpoint's changelog is sent inline

    def __init__(self, config: dict, transactional: bool, timeout_s: float, events: _Events | None = None):
        self._events = events or _Events()
        self._timeout_s = timeout_s
        self._serving = threading.Lock()  # delivery callbacks run on one thread at a time
        try:
            self.raw = ck.Producer({**config, **self._events.config(stats=False)})
        except (KafkaException, ValueError) as exc:
            raise translate(exc, "connect", "creating the producer: ") from exc
        if transactional:
            try:
                self.raw.init_transactions(timeout_s)  # fences an older producer with our id
            except KafkaException as exc:
                raise translate(exc, "transaction", "initialising transactions: ") from exc

    def send(self, topic, key, value, partition, on_done) -> None:
        self.send_many(topic, [key], [value], None if partition is None else [partition], on_done)

    def send_many(self, topic, keys, values, partitions, on_done) -> None:
        def delivered(err, msg, on_done=on_done):
            if err is None:
                on_done(None)
            else:
                on_done(translate(err, "produce", f"delivering to {msg.topic()} [{msg.partition()}]: ",
                                  topic=msg.topic()))

        produce = self.raw.produce
        n = 0
        try:
            if partitions is None:
                for key, value in zip(keys, values):
                    produce(topic, value, key, on_delivery=delivered)
                    n += 1
            else:
                for key, value, partition in zip(keys, values, partitions):
                    produce(topic, value, key, -1 if partition is None else partition, delivered)
                    n += 1
        except BufferError:  # the local queue is full: serve deliveries until there is room, go on
            self._send_slowly(topic, keys[n:], values[n:], None if partitions is None else partitions[n:],
                              delivered)
        except KafkaException as exc:
            raise translate(exc, "produce") from exc

    def _send_slowly(self, topic, keys, values, partitions, delivered) -> None:
        parts = partitions if partitions is not None else [None] * len(keys)
        for key, value, partition in zip(keys, values, parts):
            deadline = time.monotonic() + self._timeout_s
            while True:
                try:
                    self.raw.produce(topic, value, key, -1 if partition is None else partition, delivered)
                    break
                except BufferError:
                    if time.monotonic() > deadline:
                        raise DeliveryError("the producer's queue stayed full (the broker does not take records)")
                    with self._serving:
                        self.raw.poll(0.05)
                except KafkaException as exc:
                    raise translate(exc, "produce") from exc

    def poll(self) -> None:
        if self._serving.acquire(blocking=False):
            try:
                self.raw.poll(0)
            finally:
                self._serving.release()
        self._events.raise_fatal()

    def flush(self, timeout_s: float | None) -> bool:
        with self._serving:
            left = self.raw.flush(-1 if timeout_s is None else timeout_s)
        return left == 0

    def begin_transaction(self) -> None:
        self._txn(self.raw.begin_transaction)

    def send_offsets_to_transaction(self, topic: str, offsets: dict[int, int], group_metadata) -> None:
        tps = [TopicPartition(topic, p, o) for p, o in offsets.items()]
        self._txn(self.raw.send_offsets_to_transaction, tps, group_metadata, self._timeout_s)

    def commit_transaction(self) -> None:
        with self._serving:  # it flushes: delivery callbacks run here
            self._txn(self.raw.commit_transaction, self._timeout_s)

    def abort_transaction(self) -> None:
        with self._serving:
            self._txn(self.raw.abort_transaction, self._timeout_s)

    @staticmethod
    def _txn(fn, *args):
        try:
            return fn(*args)
        except KafkaException as exc:
            raise translate(exc, "transaction") from exc

    def partition_count(self, topic: str) -> int:
        """The topic's partitions as a fresh metadata request finds them (it updates the producer's metadata)."""
        try:
            t = self.raw.list_topics(topic, timeout=self._timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise translate(exc, "produce", f"reading the metadata of {topic}: ") from exc
        return 0 if t is None or t.error is not None else len(t.partitions)

    def close(self, timeout_s: float) -> None:
        with self._serving:
            if self.raw.flush(timeout_s):
                self.raw.purge()  # what did not resolve in time is dropped, never sent later
                self.raw.poll(0)
        close = getattr(self.raw, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------- reader and admin


class ConfluentReader:
    def __init__(self, config: dict, events: _Events | None = None):
        self._events = events or _Events()
        try:
            self.raw = ck.Consumer({**config, **self._events.config(stats=False)})
        except (KafkaException, ValueError) as exc:
            raise translate(exc, "connect", "creating the changelog reader: ") from exc

    def read(self, topic: str, partitions: list[int], timeout_s: float, sink) -> None:
        if not partitions:
            return
        raw = self.raw
        deadline = time.monotonic() + timeout_s
        try:
            remaining = {p for p in partitions if self._has_records(topic, p, deadline)}
            if not remaining:
                return
            raw.assign([TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in sorted(remaining)])
            try:
                while remaining:
                    if time.monotonic() > deadline:
                        raise ClientTimeout(f"changelog {topic} partitions {sorted(remaining)} not read to their end "
                                            f"within {timeout_s:.0f}s", kind="restore")
                    self._events.raise_fatal()
                    msgs = raw.consume(20000, 0)  # what is fetched already; else wait for the next fetch
                    if not msgs:
                        first = raw.poll(0.1)
                        msgs = [] if first is None else [first]
                    self._read_batch(msgs, remaining, sink)
            finally:
                raw.unassign()
        except KafkaException as exc:
            raise translate(exc, "restore") from exc

    def _has_records(self, topic: str, partition: int, deadline: float) -> bool:
        tp = TopicPartition(topic, partition)
        try:
            low, high = self.raw.get_watermark_offsets(tp, timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            if not exc.args or exc.args[0].code() != KafkaError._UNKNOWN_PARTITION:
                raise
            # a partition added since this client's last metadata refresh (the changelog grew with the
            # input): a metadata request for the topic updates its cache
            self.raw.list_topics(topic, timeout=max(1.0, deadline - time.monotonic()))
            low, high = self.raw.get_watermark_offsets(tp, timeout=max(1.0, deadline - time.monotonic()))
        return high > low

    @staticmethod
    def _read_batch(msgs: list, remaining: set[int], sink) -> None:
        by_partition: dict[int, tuple[list, list]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(m.partition())
                    continue
                raise translate(err, "restore")
            keys, values = by_partition.setdefault(m.partition(), ([], []))
            keys.append(m.key())
            values.append(m.value())
        for p, (keys, values) in by_partition.items():
            sink(p, keys, values)

    def close(self) -> None:
        self.raw.close()


class ConfluentAdmin:
    def __init__(self, config: dict, timeout_s: float, events: _Events | None = None):
        from confluent_kafka.admin import AdminClient

        self._events = events or _Events()
        self._timeout_s = timeout_s
        self._servers = config.get("bootstrap.servers")
        try:
            self.raw = AdminClient({**config, **self._events.config(stats=False)})
        except (KafkaException, ValueError) as exc:
            raise translate(exc, "connect", "creating the admin client: ") from exc

    def _metadata(self, timeout_s: float | None = None):
        try:
            return self.raw.list_topics(timeout=timeout_s or min(self._timeout_s, 5.0))
        except KafkaException as exc:
            self.raw.poll(0)  # serves the error events (a wrong password...) that say why
            self._events.raise_fatal()
            raise translate(exc, "connect", "reading the cluster metadata: ") from exc

    def _results(self, futures: dict) -> dict:
        """Wait for an admin request's futures, serving the client's error events meanwhile: an error that
        retrying cannot fix (`_Events`) is raised at once, and brokers that stay down for DOWN_AFTER_S are a
        ClientTimeout (retried by the caller), not a wait for the whole request timeout."""
        self._events.down = False
        start = time.monotonic()
        while not all(f.done() for f in futures.values()):
            self.raw.poll(0.1)
            self._events.raise_fatal()
            if self._events.down and time.monotonic() - start > DOWN_AFTER_S:
                raise ClientTimeout(f"no broker reachable at {self._servers} for {DOWN_AFTER_S:.0f}s", kind="connect")
        return futures

    def partition_counts(self, names: list[str]) -> dict[str, int | None]:
        """None for a topic that does not exist; one the client may not Describe raises (Kafka then does not say
        whether it exists)."""
        described = self.topic_access(names)
        refused = [d for d in described if d["error_code"] == KafkaError.TOPIC_AUTHORIZATION_FAILED]
        if refused:
            raise translate(refused[0]["error"], "connect", f"describing topic {refused[0]['name']}: ",
                            topic=refused[0]["name"])
        return {d["name"]: d["partitions"] for d in described}

    def topic_access(self, names: list[str]) -> list[dict]:
        """[{"name", "error_code", "authorized_operations": ["READ", ...] or None, "partitions", "error"}]
        (DescribeTopics: a metadata request that never creates a topic)."""
        try:
            futures = self._results(self.raw.describe_topics(ck.TopicCollection(list(names)),
                                                             request_timeout=self._timeout_s,
                                                             include_authorized_operations=True))
        except KafkaException as exc:
            raise translate(exc, "connect", "describing topics: ") from exc
        out = []
        for name, future in futures.items():
            entry = {"name": name, "error_code": 0, "authorized_operations": None, "partitions": None, "error": None}
            try:
                d = future.result()
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is None or err.code() not in (KafkaError.UNKNOWN_TOPIC_OR_PART,
                                                     KafkaError.TOPIC_AUTHORIZATION_FAILED):
                    self._events.raise_fatal()
                    raise translate(exc, "connect", f"describing topic {name}: ") from exc
                entry.update(error_code=err.code(), error=err)
            else:
                ops = d.authorized_operations
                entry.update(partitions=len(d.partitions), authorized_operations=None if ops is None else
                             [op.name for op in ops])
            out.append(entry)
        return out

    def create_partitions(self, topic: str, count: int) -> None:
        from confluent_kafka.admin import NewPartitions

        future = self._results(self.raw.create_partitions([NewPartitions(topic, count)], operation_timeout=30,
                                                          request_timeout=self._timeout_s))[topic]
        try:
            future.result()
        except KafkaException as exc:
            if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() == KafkaError.INVALID_PARTITIONS:
                return  # it has them already (another instance added them first)
            raise translate(exc, "connect", f"adding partitions to {topic}: ") from exc

    def create_topics(self, specs: dict[str, TopicSpec]) -> None:
        from confluent_kafka.admin import NewTopic

        new = [NewTopic(name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                        config={k: str(v) for k, v in s.configs.items()}) for name, s in specs.items()]
        futures = self._results(self.raw.create_topics(new, operation_timeout=30, request_timeout=self._timeout_s))
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args and isinstance(exc.args[0], KafkaError) and \
                        exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # another instance created it at the same moment
                raise translate(exc, "connect", f"creating topic {name}: ") from exc
        self._wait_for_leaders(list(specs), deadline=time.monotonic() + 30)

    def _wait_for_leaders(self, names: list[str], deadline: float) -> None:
        while True:
            topics = self._metadata().topics
            if all(n in topics and topics[n].error is None and topics[n].partitions and
                   all(p.leader >= 0 for p in topics[n].partitions.values()) for n in names):
                return
            if time.monotonic() > deadline:
                raise ClientTimeout(f"created topics {', '.join(names)} have no leaders after 30 s")
            time.sleep(0.1)

    def topic_config(self, topic: str, name: str) -> str | None:
        from confluent_kafka.admin import ConfigResource, ResourceType

        resource = ConfigResource(ResourceType.TOPIC, topic)
        try:
            entries = self._results(self.raw.describe_configs([resource], request_timeout=self._timeout_s))[resource].result()
        except KafkaException as exc:
            raise translate(exc, "connect", f"describing topic {topic}: ") from exc
        entry = entries.get(name)
        return None if entry is None else entry.value

    def close(self) -> None:
        """Nothing to close: the admin client is released with its last reference."""

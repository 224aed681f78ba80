"""The confluent-kafka (librdkafka) implementation of `streamer.kafka.client` (``--kafka-client confluent``).

- `ConfluentClients`: the factory; the settings (`consumer_config`...), the error translation and the
  client events are in `streamer.kafka.rdkafka`.
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
- `ConfluentReader`, `ConfluentAdmin`: in `streamer.kafka.confluent_admin`.
"""
from __future__ import annotations

import logging
import threading
import time

import confluent_kafka as ck
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from streamer.kafka.client import Batch, ClientError, Clients, DeliveryError
from streamer.kafka.confluent_admin import ConfluentAdmin, ConfluentReader
from streamer.kafka.rdkafka import (FATAL_CODES, _Events, admin_config, consumer_config, producer_config,
                                    reader_config, translate)

log = logging.getLogger("streamer.serve")

_error, _partition, _offset = Message.error, Message.partition, Message.offset
_key, _value = Message.key, Message.value
_NO_ERRORS = {type(None)}
JOIN_POLL_S = 0.01  # poll slices while joining the group (`ConfluentConsumer._poll_joining`)


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
                first = raw.poll(timeout_s) if self._assignment else self._poll_joining(timeout_s)
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

    def _poll_joining(self, timeout_s: float):
        """``poll(timeout_s)`` in short slices while nothing is assigned: librdkafka runs the assignment callback
        inside a poll and goes on waiting for a message until the timeout, but the loop must restore the new
        partitions first (they are paused until then): return as soon as an assignment came."""
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.raw.poll(min(JOIN_POLL_S, max(0.0, deadline - time.monotonic())))
            if msg is not None or self._assignment or time.monotonic() >= deadline:
                return msg

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

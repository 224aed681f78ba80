"""`Checkpoint`: the one object that owns the commit order (and the producer everything goes through).

At-least-once (default), one checkpoint is::

    1. predictions and dead letters of the interval were already sent (through `send`)
    2. changelog: tombstones that are safe to write (see below), then the state of every stream that
       changed since the last checkpoint (`StateStore.take_changes`)
    3. producer.flush(): outputs and changelog acknowledged (acks=all); a delivery error fails the checkpoint
    4. commit the input offsets the state covers (consumer.commit)

so committed offsets never run ahead of durable state and durable outputs. The changelog may run
ahead of the offsets (a crash between 3 and 4): the replayed events are then duplicates by step and
skipped. One exception needs care: a tombstone written before the offset of the stream's `end` event
is committed would, after a crash in that window, let the replayed tail of the ended stream start a
new stream on a fresh state. So the tombstones of streams freed in one interval are held back and
written by the first checkpoint after an offset commit that covers them.

Exactly-once (``exactly_once=True``): a transaction is open from the first send after a checkpoint;
a checkpoint adds the changelog records (tombstones and states), flushes, adds the input offsets with
``send_offsets_to_transaction(offsets, consumer.group_metadata())`` and commits. Predictions, dead
letters, changelog and offsets become visible together or not at all.

Any failure raises; the caller then rewinds (see `streamer.kafka.service`): a new producer (an open
transaction is aborted), the state reloaded from the changelog, the input re-read from the committed
offsets. Flushes wait for every record to be acknowledged or failed, which the producer's
delivery.timeout.ms bounds (``--checkpoint-timeout``), so no record of a failed checkpoint can land
later, after someone else has taken its partition over.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Callable

from kafka.errors import KafkaError, KafkaTimeoutError

from streamer.kafka import changelog

log = logging.getLogger(__name__)


class DeliveryError(KafkaError):
    """A record sent since the last checkpoint was not delivered."""


class Checkpoint:
    """Sends outputs and changelog records through `producer` and checkpoints them in order.

    `producer` is a kafka-python KafkaProducer (transactional and initialised when `exactly_once`).
    Not thread-safe: the serve loop and the rebalance callbacks take turns (see the service).
    """

    def __init__(self, producer, changelog_topic: str, *, exactly_once: bool, metrics=None,
                 flush_timeout_s: float | None = None):
        self.producer = producer
        self.changelog_topic = changelog_topic
        self.exactly_once = exactly_once
        self.metrics = metrics
        self.flush_timeout_s = flush_timeout_s  # a safety net beyond delivery.timeout.ms
        self.closed = False  # the producer was closed after a failure (the service replaces it)
        self.stuck = False  # a flush outlived delivery.timeout.ms: its records will not resolve
        self._failure: BaseException | None = None
        self._generation = 0  # bumped when the records in flight are forgotten: their late errors are too
        self._txn_open = False
        self._sent = 0  # records sent since the last checkpoint
        # at-least-once tombstones: stream id -> partition
        self._awaiting: dict[str, int] = {}  # freed; their end is not yet covered by committed offsets
        self._ready: dict[str, int] = {}  # covered: write them at the next checkpoint

    # ------------------------------------------------------------------ sending

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """Send one record; a delivery failure is remembered and fails the next checkpoint."""
        if self.exactly_once and not self._txn_open:
            self.producer.begin_transaction()
            self._txn_open = True
        future = self.producer.send(topic, value=value, key=key, partition=partition)
        future.add_errback(self._on_error, self._generation)
        self._sent += 1

    def send_many(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        """`send` for a batch (the hot path: one prediction record per event)."""
        if not keys:
            return
        if self.exactly_once and not self._txn_open:
            self.producer.begin_transaction()
            self._txn_open = True
        send = self.producer.send
        on_error = functools.partial(self._on_error, self._generation)
        for key, value in zip(keys, values):
            send(topic, value=value, key=key).add_errback(on_error)
        self._sent += len(keys)

    def _on_error(self, generation: int, exc: BaseException) -> None:  # runs on the producer's sender thread
        if self._failure is None and generation == self._generation:
            self._failure = exc

    def pending_work(self) -> bool:
        return self._sent > 0 or bool(self._ready)

    # ------------------------------------------------------------------ checkpoints

    def commit(self, store, offsets: dict, commit_offsets: Callable[[dict], None], group_metadata=None) -> bool:
        """One full checkpoint (see the module docstring). `offsets`: {TopicPartition: OffsetAndMetadata}
        of the input positions the store's state covers; `commit_offsets(offsets)` commits them
        (at-least-once); `group_metadata` is `consumer.group_metadata()` (exactly-once).

        Returns whether the offsets were committed. Raises when the state or outputs are not durable."""
        if self.exactly_once:
            self.commit_transaction(store, offsets, group_metadata)
            return True
        self.write(store)
        if offsets:
            try:
                commit_offsets(offsets)
            except KafkaError as exc:  # state is durable: the events are replayed and deduplicated later
                log.warning("offset commit failed (%s: %s); the events since the last commit will be replayed "
                            "and deduplicated", type(exc).__name__, exc)
                self._count_error("commit")
                return False
        self.offsets_committed()
        return True

    def write(self, store) -> None:
        """At-least-once steps 2-3: changelog records, then flush (raises on a delivery failure)."""
        changes = store.take_changes()
        tombstones = dict(self._ready)
        for sid, partition in tombstones.items():
            self.send(self.changelog_topic, changelog.encode_key(sid), None, partition)
        for sid, partition in changes.updated:
            self._awaiting.pop(sid, None)  # started again: that tombstone is obsolete
            self.send(self.changelog_topic, changelog.encode_key(sid), store.export(sid).to_bytes(), partition)
        self._awaiting.update(changes.freed)
        self.flush()
        self._count_changelog(len(changes.updated), len(tombstones))
        for sid in tombstones:
            if self._ready.get(sid) == tombstones[sid]:
                del self._ready[sid]

    def offsets_committed(self) -> None:
        """At-least-once step 4 done: the held-back tombstones are covered now."""
        self._ready.update(self._awaiting)
        self._awaiting.clear()

    def write_tombstones(self) -> None:
        """Write the covered tombstones now (before giving partitions up) and flush."""
        if not self._ready:
            return
        tombstones = dict(self._ready)
        for sid, partition in tombstones.items():
            self.send(self.changelog_topic, changelog.encode_key(sid), None, partition)
        self.flush()
        self._count_changelog(0, len(tombstones))
        self._ready.clear()

    def commit_transaction(self, store, offsets: dict, group_metadata) -> None:
        """Exactly-once: changelog records and input offsets join the open transaction, which commits."""
        changes = store.take_changes()
        for sid, partition in changes.freed:
            self.send(self.changelog_topic, changelog.encode_key(sid), None, partition)
        for sid, partition in changes.updated:
            self.send(self.changelog_topic, changelog.encode_key(sid), store.export(sid).to_bytes(), partition)
        if not self._txn_open and not offsets:
            return
        if not self._txn_open:
            self.producer.begin_transaction()
            self._txn_open = True
        self.flush()
        if offsets:
            self.producer.send_offsets_to_transaction(offsets, group_metadata)
        self.producer.commit_transaction()
        self._txn_open = False
        self._count_changelog(len(changes.updated), len(changes.freed))
        if self.metrics is not None:
            self.metrics.transactions.labels("committed").inc()

    def flush(self) -> None:
        """Wait until every record sent so far is acknowledged or failed (delivery.timeout.ms bounds
        this); raise if one failed."""
        t0 = time.perf_counter()
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        except KafkaTimeoutError:
            # kafka-python 3.0.12 can leave batches neither acknowledged nor expired after a broker restart
            self.stuck = True
            self._count_error("flush")
            raise
        if self._failure is not None:
            exc, self._failure = self._failure, None
            self._count_error("produce")
            raise DeliveryError(f"a record was not delivered: {type(exc).__name__}: {exc}") from exc
        self._sent = 0
        log.debug("flush took %.1f ms", 1000 * (time.perf_counter() - t0))

    # ------------------------------------------------------------------ failures and partitions

    def settle(self) -> None:
        """Let every record in flight resolve (acknowledged or failed), ignoring the outcome: after a
        failed checkpoint, before the producer is closed, so that nothing it holds lands later."""
        if self.stuck:
            return
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        except Exception as exc:  # noqa: BLE001 - only the waiting matters here
            log.debug("settle: %s", exc)

    def abort(self) -> None:
        """Exactly-once: abort the open transaction (its records are never visible). Raises on failure."""
        self._failure = None
        self._sent = 0
        if self.exactly_once and self._txn_open:
            self._txn_open = False
            self.producer.abort_transaction()
            if self.metrics is not None:
                self.metrics.transactions.labels("aborted").inc()

    def discard(self) -> None:
        """Forget records in flight (the producer is being replaced); the tombstones awaiting a commit
        go too: their streams' end events will be replayed and free them again."""
        self._failure = None
        self._generation += 1
        self._sent = 0
        self._txn_open = False
        self._awaiting.clear()

    def forget_partitions(self, partitions) -> None:
        """Drop held-back tombstones of partitions given up."""
        keep = set(partitions)
        lost = 0
        for table in (self._awaiting, self._ready):
            for sid in [s for s, p in table.items() if p in keep]:
                del table[sid]
                lost += 1
        if lost:
            log.warning("%d tombstone(s) of revoked partitions could not be written (their streams' last "
                        "records stay in the changelog until they end or expire again)", lost)

    def _count_changelog(self, states: int, tombstones: int) -> None:
        if self.metrics is not None:
            if states:
                self.metrics.changelog_records.labels("state").inc(states)
            if tombstones:
                self.metrics.changelog_records.labels("tombstone").inc(tombstones)

    def _count_error(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.error(kind)

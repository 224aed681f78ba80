"""`Checkpoint`: the one object that owns the commit order (and the producer everything goes through).

At-least-once (default), one checkpoint is::

    1. predictions and dead letters of the interval were already sent (through `send`)
    2. changelog: tombstones that are safe to write (see below), then the state of every stream that
       changed since the last checkpoint (`StateStore.take_changes`)
    3. every record sent up to here is acknowledged (acks=all); a delivery error fails the checkpoint
    4. commit the input offsets the state covers (consumer.commit)

so committed offsets never run ahead of durable state and durable outputs. The changelog may run
ahead of the offsets (a crash between 3 and 4): the replayed events are then duplicates by step and
skipped. One exception needs care: a tombstone written before the offset of the stream's `end` event
is committed would, after a crash in that window, let the replayed tail of the ended stream start a
new stream on a fresh state. So the tombstones of streams freed before a checkpoint are held back and
written by the first checkpoint after an offset commit that covers them.

In the serve loop, a checkpoint does not stop processing: `begin` takes the changed streams' state
(a snapshot: later events are not in it, which is fine: the offsets it goes with are the ones before
them) and sends the records (through a short-lived sender thread when the producer's sends cost much
Python time: ``producer.background_sends``), and closes an *epoch*; every record sent carries its epoch
and counts itself resolved in its delivery callback (kafka-python: on the producer's thread;
confluent-kafka: in ``poll``, which the loop calls every round through `Checkpoint.poll`); `due`
reports the offsets once every record of the closed epochs is sent and acknowledged, and the loop then
commits them (`committed`). `commit` (`write` + commit) is the same checkpoint done synchronously, for
revocation and shutdown.

The producer is a `streamer.kafka.client.Producer` (either client); offsets are {input partition: next
offset}.

Exactly-once (``exactly_once=True``): a transaction is open from the first send after a checkpoint;
a checkpoint adds the changelog records (tombstones and states), flushes, adds the input offsets with
``send_offsets_to_transaction(input_topic, offsets, consumer.group_metadata())`` and commits. Predictions, dead
letters, changelog and offsets become visible together or not at all.

Any failure raises; the caller then rewinds (see `streamer.kafka.service`): a new producer (an open
transaction is aborted), the state reloaded from the changelog, the input re-read from the committed
offsets. Records resolve within the producer's delivery.timeout.ms (``--checkpoint-timeout``), so no
record of a failed checkpoint can land later, after someone else has taken its partition over.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from streamer.kafka import changelog
from streamer.kafka.client import ClientError, ClientTimeout, DeliveryError

__all__ = ["Checkpoint", "DeliveryError"]

log = logging.getLogger(__name__)

# The changelog sender thread (kafka-python) pauses this long after every PACE_RECORDS records, so that a
# checkpoint of many streams (kafka-python spends ~60 us of Python per record) does not hold the loop up.
PACE_RECORDS = 25
PACE_SECONDS = 0.002


@dataclass
class _Pending:
    """An at-least-once checkpoint waiting for its records to be acknowledged."""

    epoch: int  # every record of epochs <= this must be resolved
    offsets: dict
    freed: dict[str, int] = field(default_factory=dict)  # tombstones its offsets cover
    written: dict[str, int] = field(default_factory=dict)  # covered tombstones it wrote
    started: float = field(default_factory=time.monotonic)
    sender: threading.Thread | None = None  # sending its changelog records
    sent: bool = True  # every record handed to the producer
    error: BaseException | None = None  # from the sender thread


class Checkpoint:
    """Sends outputs and changelog records through `producer` and checkpoints them in order.

    `producer` is a `streamer.kafka.client.Producer` (transactional and initialised when `exactly_once`);
    `input_topic` is the topic whose offsets a transaction commits. Not thread-safe: the serve loop and
    the rebalance callbacks take turns (see the service); the delivery callbacks only count.
    """

    def __init__(self, producer, changelog_topic: str, *, exactly_once: bool, input_topic: str = "events",
                 metrics=None, flush_timeout_s: float | None = None):
        self.producer = producer
        self.changelog_topic = changelog_topic
        self.input_topic = input_topic
        self.exactly_once = exactly_once
        self.metrics = metrics
        self.flush_timeout_s = flush_timeout_s  # a safety net beyond delivery.timeout.ms
        self.closed = False  # the producer was closed after a failure (the service replaces it)
        self.stuck = False  # a flush outlived delivery.timeout.ms: its records will not resolve
        self._failure: BaseException | None = None
        self._generation = 0  # bumped when the records in flight are forgotten: their late news is too
        self._epoch = 0
        self._sent: dict[int, int] = {}  # epoch -> records sent (main thread writes)
        self._done: dict[int, int] = {}  # epoch -> records resolved (producer thread writes)
        self._pending: _Pending | None = None
        self._txn_open = False
        # at-least-once tombstones: stream id -> partition
        self._awaiting: dict[str, int] = {}  # freed; their end is not yet covered by committed offsets
        self._ready: dict[str, int] = {}  # covered: write them at the next checkpoint

    # ------------------------------------------------------------------ sending

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """Send one record; a delivery failure is remembered and fails the next checkpoint."""
        self._open_transaction()
        self.producer.send(topic, key, value, partition, functools.partial(self._on_done, self._generation, self._epoch))
        self._sent[self._epoch] = self._sent.get(self._epoch, 0) + 1

    def send_many(self, topic: str, keys: list[bytes], values: list[bytes],
                  partitions: list[int | None] | None = None) -> None:
        """`send` for a batch (the hot path: one prediction record per event); `partitions`: explicit
        partitions (None entries: the key's hash decides)."""
        if not keys:
            return
        self._open_transaction()
        self._sent[self._epoch] = self._sent.get(self._epoch, 0) + len(keys)
        self.producer.send_many(topic, keys, values, partitions,
                                functools.partial(self._on_done, self._generation, self._epoch))

    def _open_transaction(self) -> None:
        if self.exactly_once and not self._txn_open:
            self.producer.begin_transaction()
            self._txn_open = True

    def _on_done(self, generation: int, epoch: int, error: BaseException | None) -> None:  # delivery callback
        if generation != self._generation:
            return
        if error is not None and self._failure is None:
            self._failure = error
        self._done[epoch] = self._done.get(epoch, 0) + 1

    def poll(self) -> None:
        """Serve the producer's delivery callbacks (each round of the loop)."""
        self.producer.poll()

    def pending_work(self) -> bool:
        return bool(self._sent) or bool(self._ready) or self._pending is not None

    @property
    def in_transaction(self) -> bool:
        """Exactly-once: a transaction is open (records were sent since the last checkpoint)."""
        return self._txn_open

    # ------------------------------------------------------------------ at-least-once, pipelined

    def begin(self, store, offsets: dict) -> bool:
        """Start a checkpoint without waiting (steps 2 and the start of 3); False while one is pending,
        or when there is nothing to checkpoint."""
        if self._pending is not None:
            return False
        written = dict(self._ready)
        records, freed = self._changelog_records(store)
        if not records and not offsets and not freed and not self._sent:
            return False
        p = self._pending = _Pending(self._epoch, offsets, freed, written)
        self._epoch += 1
        if records and self.producer.background_sends:
            p.sent = False
            p.sender = threading.Thread(target=self._send_records, args=(p, records, self._generation),
                                        name="changelog-send", daemon=True)
            p.sender.start()
        elif records:
            self._send_records(p, records, self._generation, pace=False)
        return True

    def _send_records(self, p: _Pending, records: list, generation: int, pace: bool = True) -> None:
        """Hand a checkpoint's changelog records to the producer (on a thread: so that serving goes on)."""
        try:
            on_done = functools.partial(self._on_done, generation, p.epoch)
            topic = self.changelog_topic
            if not pace:
                self._sent[p.epoch] = self._sent.get(p.epoch, 0) + len(records)
                keys, values, partitions = zip(*records)
                self.producer.send_many(topic, list(keys), list(values), list(partitions), on_done)
                return
            send = self.producer.send
            for i, (key, value, partition) in enumerate(records, 1):
                send(topic, key, value, partition, on_done)
                self._sent[p.epoch] = self._sent.get(p.epoch, 0) + 1
                if i % PACE_RECORDS == 0:
                    time.sleep(PACE_SECONDS)  # let the serve loop have the GIL: latency over burst speed
        except BaseException as exc:  # noqa: BLE001 - reported by due()
            p.error = exc
        finally:
            p.sent = True

    def due(self) -> dict | None:
        """The pending checkpoint's offsets once all its records are acknowledged (then commit them and
        call `committed`); None while they are in flight. Raises DeliveryError if one failed, and
        ClientTimeout if they outlive the flush timeout."""
        p = self._pending
        if p is None:
            return None
        self._raise_failure()
        if p.error is not None:
            exc, p.error = p.error, None
            raise exc if isinstance(exc, ClientError) else DeliveryError(f"sending the changelog failed: {exc}")
        if not p.sent or any(self._done.get(e, 0) < n for e, n in self._sent.items() if e <= p.epoch):
            if self.flush_timeout_s is not None and time.monotonic() - p.started > self.flush_timeout_s:
                self.stuck = True
                self._count_error("flush")
                raise ClientTimeout(f"checkpoint records not acknowledged within {self.flush_timeout_s:.0f}s",
                                    kind="flush")
            return None
        for e in [e for e in self._sent if e <= p.epoch]:
            del self._sent[e]
            self._done.pop(e, None)
        self._forget_written(p.written)
        return p.offsets

    def committed(self, ok: bool) -> None:
        """The pending checkpoint's offsets were committed (`ok`) or not: its tombstones are covered, or
        wait for the next commit."""
        p, self._pending = self._pending, None
        if p is None:
            return
        self._awaiting.update(p.freed)
        if ok:
            self.offsets_committed()

    # ------------------------------------------------------------------ at-least-once, synchronous

    def commit(self, store, offsets: dict, commit_offsets: Callable[[dict], None], group_metadata=None) -> bool:
        """One full checkpoint, waited for (see the module docstring). `offsets`: {partition: offset} of
        the input positions the store's state covers; `commit_offsets(offsets)`
        commits them (at-least-once); `group_metadata` is `consumer.group_metadata()` (exactly-once).

        Returns whether the offsets were committed. Raises when the state or outputs are not durable."""
        if self.exactly_once:
            self.commit_transaction(store, offsets, group_metadata)
            return True
        self.write(store)
        if offsets:
            try:
                commit_offsets(offsets)
            except ClientError as exc:  # state is durable: the events are replayed and deduplicated later
                log.warning("offset commit failed (%s); the events since the last commit will be replayed "
                            "and deduplicated", exc)
                self._count_error("commit")
                return False
        self.offsets_committed()
        return True

    def write(self, store) -> None:
        """Steps 2-3 waited for: changelog records, then flush (raises on a delivery failure). A pending
        checkpoint is folded in (its offsets are older than the ones this one covers); its records are
        acknowledged first, so no newer record of a stream can overtake them."""
        if self._pending is not None:
            self.flush()
        written = dict(self._ready)
        freed = self._send_changelog(store)
        self.flush()
        self._forget_written(written)
        if self._pending is not None:
            self._awaiting.update(self._pending.freed)
            self._pending = None
        self._awaiting.update(freed)

    def offsets_committed(self) -> None:
        """Step 4 done: the held-back tombstones are covered now."""
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
        self._forget_written(tombstones)

    def _forget_written(self, tombstones: dict[str, int]) -> None:
        """Acknowledged tombstones leave the covered set (unless their stream was freed again since)."""
        for sid, partition in tombstones.items():
            if self._ready.get(sid) == partition:
                del self._ready[sid]

    def _send_changelog(self, store) -> dict[str, int]:
        """Send `_changelog_records` now; returns the newly freed streams."""
        records, freed = self._changelog_records(store)
        if records:
            keys, values, partitions = zip(*records)
            self.send_many(self.changelog_topic, list(keys), list(values), list(partitions))
        return freed

    def _changelog_records(self, store) -> tuple[list, dict[str, int]]:
        """Covered tombstones, then the changed streams' states, as (key, value, partition); and the
        newly freed streams. A covered tombstone stays covered until acknowledged (a failed checkpoint
        writes it again)."""
        changes = store.take_changes()
        encode_key = changelog.encode_key
        pending_freed = self._pending.freed if self._pending is not None else {}
        for sid, _ in changes.updated:
            # started again: an older tombstone is obsolete, the new record replaces it. (Each key at most
            # once per checkpoint, so a retried batch cannot put two of its records out of order.)
            self._awaiting.pop(sid, None)
            self._ready.pop(sid, None)
            pending_freed.pop(sid, None)
        records = [(encode_key(sid), None, partition) for sid, partition in self._ready.items()]
        n_tombstones = len(records)
        values = store.export_bytes([sid for sid, _ in changes.updated])
        records.extend((encode_key(sid), value, partition) for (sid, partition), value in zip(changes.updated, values))
        self._count_changelog(len(changes.updated), n_tombstones)
        return records, dict(changes.freed)

    def wait_sent(self) -> None:
        """Wait until the pending checkpoint's changelog records are handed to the producer."""
        p = self._pending
        if p is not None and p.sender is not None:
            p.sender.join()

    # ------------------------------------------------------------------ exactly-once

    def commit_transaction(self, store, offsets: dict, group_metadata) -> None:
        """Exactly-once: changelog records and input offsets join the open transaction, which commits."""
        changes = store.take_changes()
        for pairs, values in ((changes.freed, [None] * len(changes.freed)),
                              (changes.updated, store.export_bytes([sid for sid, _ in changes.updated]))):
            self.send_many(self.changelog_topic, [changelog.encode_key(sid) for sid, _ in pairs], values,
                           [partition for _, partition in pairs])
        if not self._txn_open and not offsets:
            return
        self._open_transaction()
        self.flush()
        if offsets:
            self.producer.send_offsets_to_transaction(self.input_topic, offsets, group_metadata)
        self.producer.commit_transaction()
        self._txn_open = False
        self._count_changelog(len(changes.updated), len(changes.freed))
        if self.metrics is not None:
            self.metrics.transactions.labels("committed").inc()

    # ------------------------------------------------------------------ flushing and failures

    def flush(self) -> None:
        """Wait until every record sent so far is acknowledged or failed (delivery.timeout.ms bounds
        this); raise if one failed."""
        self.wait_sent()
        if not self.producer.flush(self.flush_timeout_s):
            # kafka-python 3.0.12 can leave batches neither acknowledged nor expired after a broker restart
            self.stuck = True
            self._count_error("flush")
            raise ClientTimeout(f"records not acknowledged within {self.flush_timeout_s or 0:.0f}s", kind="flush")
        self._raise_failure()
        self._sent.clear()
        self._done.clear()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            exc, self._failure = self._failure, None
            self._count_error("produce")
            text = str(exc) if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"
            raise DeliveryError(f"a record was not delivered: {text}") from exc

    def settle(self) -> None:
        """Let every record in flight resolve (acknowledged or failed), ignoring the outcome: after a
        failed checkpoint, before the producer is closed, so that nothing it holds lands later."""
        if self.stuck:
            return
        try:
            self.wait_sent()
            self.producer.flush(self.flush_timeout_s)
        except Exception as exc:  # noqa: BLE001 - only the waiting matters here
            log.debug("settle: %s", exc)

    def abort(self) -> None:
        """Exactly-once: abort the open transaction (its records are never visible). Raises on failure."""
        self._failure = None
        if self.exactly_once and self._txn_open:
            self._txn_open = False
            self.producer.abort_transaction()
            if self.metrics is not None:
                self.metrics.transactions.labels("aborted").inc()

    def discard(self) -> None:
        """Forget records in flight (the producer is being replaced); the tombstones awaiting a commit
        go too: their streams' end events will be replayed and free them again."""
        p = self._pending
        if p is not None and p.sender is not None:
            p.sender.join(5)  # it fails fast on a closed producer
        self._failure = None
        self._generation += 1
        self._epoch += 1  # a late callback of the old generation cannot count for a new record
        self._sent.clear()
        self._done.clear()
        self._pending = None
        self._txn_open = False
        self._awaiting.clear()

    def forget_partitions(self, partitions) -> None:
        """Drop held-back tombstones of partitions given up."""
        keep = set(partitions)
        lost = 0
        tables = [self._awaiting, self._ready] + ([self._pending.freed] if self._pending is not None else [])
        for table in tables:
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

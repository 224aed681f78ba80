"""The serve loop: a consumer group member that runs the engine on its partitions' events.

It runs on the client interface of `streamer.kafka.client` (kafka-python or confluent-kafka; see
`streamer.kafka.kafka_python` and `streamer.kafka.confluent`), the same code for both.

Main thread, each round::

    recover if an error asked for it -> restore newly assigned partitions -> consumer.consume
    -> engine.process (`_process`) -> send predictions and dead letters -> serve delivery reports
    -> checkpoint every --checkpoint-interval (`_checkpoint`, `_finish_checkpoint`)

Rebalances: the consumer calls this service as its `RebalanceListener` (kafka-python on its IO thread
while the main thread waits inside ``consume``; librdkafka on the main thread inside ``consume``/``close``;
a lock keeps callbacks and loop apart either way). The callbacks stay short:

- revoked (`revoke_checkpoint`, `revoke_done`): checkpoint now (`Checkpoint`), so the next owner restores
  exactly what was processed; the consumer commits the offsets it returns and reports back. Their
  streams stay in memory until the assignment arrives: with an eager assignor (kafka-python's default)
  every rebalance revokes everything, and a partition that comes straight back keeps its state and
  position without a restore. With the cooperative assignor (confluent) only the partitions that move
  are revoked, and `unassigned` drops them at once (they are never handed straight back);
- assigned (`assigned`, the whole assignment): partitions that are new here are paused and queued; the
  main thread restores them from the changelog (read to its end, `_restore_pending`) and only then
  resumes them, so no event of theirs is processed before its stream's state is back; partitions not
  assigned any more are dropped;
- lost (`lost`, forced out of the group): their state is dropped without writing anything (another
  member may own them already); under exactly-once the open transaction is aborted.

Hostile input (see `streamer.engine`, `streamer.limits`, `streamer.routing`): one bad message costs one
dead letter; every record is sized to fit its topic (`streamer.kafka.limits` reads the limits at start-up);
keys are checked against stream ids and partitions against murmur2 (`streamer.kafka.routing`); partitions
added to the input are noticed within seconds (`streamer.kafka.topology`); static membership makes a
restarted instance get its partitions back at once, and a SIGTERM leaves the group unless
--stay-in-group (`streamer.kafka.membership`); a fenced instance stops.

Errors: a Kafka error in the loop (a `ClientError`: broker down, delivery failure, flush timeout) is
counted, waited out with exponential backoff, and followed by a rewind to the last checkpoint
(`_recover`): a new producer (records in flight dropped, open transaction aborted), every owned
partition's state reloaded from the changelog and its input re-read from the committed offset. Nothing
acknowledged is lost; replayed steps are duplicates by step and skipped. A `FatalClientError`
(authentication, authorisation, configuration) stops serve with one line, and so does any error that
`Clients.explain` can name (`streamer.kafka.failures`: an ACL revoked while serving, say).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from streamer import limits, schema
from streamer.errors import UserError
from streamer.kafka.checkpoint import Checkpoint
from streamer.kafka.client import Batch, ClientError, ClientTimeout, FatalClientError, Fenced
from streamer.kafka.health import GroupHealth
from streamer.kafka.restore import Restorer
from streamer.kafka.routing import PartitionerCheck
from streamer.kafka.topics import Topics
from streamer.kafka.topology import TopologyWatch
from streamer.state import StateMismatch
from streamer.transports import Poll

log = logging.getLogger("streamer.serve")

# Errors that retrying cannot fix: stop with a clear message instead of looping.
FATAL_ERRORS = (FatalClientError, UserError)


@dataclass(frozen=True)
class ServeSettings:
    topics: Topics
    exactly_once: bool = False
    checkpoint_interval_s: float = 1.0
    poll_timeout_ms: int = 100
    max_poll_records: int = 1000
    on_model_change: str = "reset"
    restore_timeout_s: float = 300.0
    commit_timeout_ms: int = 30000
    # the output topic has the input topic's partition count: a stream's predictions go to the partition
    # with its events' number (no key hashing on the hot path); else Kafka's default partitioner decides
    co_partitioned: bool = False
    changelog_partitions: int | None = None  # input partitions beyond it have nowhere to keep their state
    output_partitions: int | None = None  # co-partitioned: input partitions beyond it go by key
    create_topics: bool = False  # also: add changelog partitions when the input grows
    leave_on_shutdown: bool = True  # a static member leaves the group on SIGTERM (streamer.kafka.membership)


class Backoff:
    def __init__(self, first: float = 0.5, cap: float = 10.0):
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        d = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return d

    def reset(self) -> None:
        self.delay = self.first


def retrying(fn, stop: threading.Event, metrics, what: str, kind: str = "connect", explain=None):
    """fn() until it succeeds or `stop` is set (then None); Kafka errors are counted, logged, backed off.
    `explain(exc)`: a line for an error that retrying cannot fix (a wrong password, TLS, ACLs): UserError."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            return fn()
        except FATAL_ERRORS:
            raise
        except ClientError as exc:
            line = explain(exc) if explain is not None else None
            if line:
                raise UserError(line) from None
            metrics.error(kind)
            delay = backoff.next()
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            stop.wait(delay)
    return None


class KafkaService:
    """One group member: owns the clients, the engine's partitions and the checkpoints."""

    def __init__(self, engine, settings: ServeSettings, clients, metrics, ready: threading.Event | None = None):
        """`clients`: a `streamer.kafka.client.Clients` (`make_clients`)."""
        self.engine = engine
        self.settings = settings
        self.clients = clients
        self.metrics = metrics
        self.ready = ready if ready is not None else threading.Event()
        self.topic = settings.topics.input
        self.consumer = None
        self.checkpoint: Checkpoint | None = None
        self.restorer: Restorer | None = None
        self._lock = threading.RLock()
        self._owned: set[int] = set()  # assigned to us
        self._active: set[int] = set()  # assigned, state restored: processing
        self._pending: set[int] = set()  # assigned, waiting for their restore (paused)
        self._suspended: set[int] = set()  # revoked, kept until the assignment says whether they come back
        self._positions: dict[int, int] = {}  # next offset to process, per active partition
        self._committed: dict[int, int] = {}  # last committed offset we know of
        self._needs_recovery = False
        self._fenced = False
        self._resetting = False  # replacing a stuck consumer: callbacks do nothing
        t = clients.tuning
        self.health = GroupHealth(metrics, t.session_timeout_ms / 1000,
                                  stuck_after_s=(t.max_poll_interval_ms + t.session_timeout_ms) / 1000)
        self._abandoned: list = []  # producers whose records never resolved (closing them would block)
        self._last_lag = 0.0
        self._checkpoint_started = 0.0
        self.partitioner = PartitionerCheck(metrics.partitioner_mismatches)
        self.topology = TopologyWatch(settings.topics, clients, metrics,
                                      changelog_partitions=settings.changelog_partitions,
                                      output_partitions=settings.output_partitions if settings.co_partitioned else None,
                                      create_topics=settings.create_topics, await_changelog=self._await_partitions)
        self.totals = {"polls": 0, "messages": 0, "records": 0, "dead_letters": 0, "checkpoints": 0,
                       "recoveries": 0}

    # ------------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set: then checkpoint, commit, leave the group and close."""
        if not self._connect(stop):
            return
        s = self.settings
        backoff = Backoff()
        last_checkpoint = time.monotonic()
        watcher_stop = threading.Event()
        watcher = threading.Thread(target=self._watch_connections, args=(watcher_stop,), name="kafka-watch",
                                   daemon=True)
        watcher.start()
        try:
            while not stop.is_set():
                try:
                    if self._needs_recovery:
                        self._recover()
                    if self._pending:
                        self._restore_pending()
                    batch = self.consumer.consume(s.max_poll_records, s.poll_timeout_ms / 1000)
                    received = time.perf_counter()
                    if batch:
                        with self._lock:
                            if s.exactly_once and self.checkpoint.in_transaction and _heavy(batch):
                                self._checkpoint()  # a long poll must not age an open transaction
                            self._process(batch, received)
                    self.checkpoint.poll()
                    now = time.monotonic()
                    if not s.exactly_once:
                        with self._lock:
                            self._finish_checkpoint()
                    if now - last_checkpoint >= s.checkpoint_interval_s:
                        last_checkpoint = now
                        with self._lock:
                            self._checkpoint()
                    if now - self._last_lag >= 1.0:
                        self._last_lag = now
                        self._update_lag()
                        self._watch_group(now)
                        self.topology.observe(self.consumer.partition_count())
                    backoff.reset()
                except FATAL_ERRORS as exc:
                    if isinstance(exc, Fenced) and self.health.fence_after_outage(time.monotonic()):
                        self._replace_consumer()  # (librdkafka's own stale member id: see streamer.kafka.health)
                        continue
                    self._fenced = isinstance(exc, Fenced)  # another process is this member now
                    raise
                except ClientError as exc:
                    line = self.clients.explain(exc, probe=False)  # e.g. an ACL revoked while serving
                    if line:
                        raise UserError(line) from None
                    self.metrics.error(exc.kind)
                    self._needs_recovery = True
                    delay = backoff.next()
                    log.warning("Kafka error (%s); rewinding to the last checkpoint in %.1fs", exc, delay)
                    stop.wait(delay)
        finally:
            watcher_stop.set()
            watcher.join(5)
            self._shutdown()

    def _connect(self, stop: threading.Event) -> bool:
        def make():
            if self.consumer is None:
                self.consumer = self.clients.consumer()
            if self.checkpoint is None:
                self.checkpoint = Checkpoint(self.clients.producer(), self.settings.topics.changelog,
                                             input_topic=self.topic,
                                             exactly_once=self.settings.exactly_once, metrics=self.metrics,
                                             flush_timeout_s=self.clients.tuning.delivery_timeout_ms / 1000 + 5)
            if self.restorer is None:
                self.restorer = Restorer(self.clients.reader(), self.settings.topics.changelog,
                                         on_model_change=self.settings.on_model_change, metrics=self.metrics,
                                         timeout_s=self.settings.restore_timeout_s)
            return True

        if not retrying(make, stop, self.metrics, "connecting to Kafka", explain=self.clients.explain):
            self._close_clients()
            return False
        if not retrying(self._subscribe, stop, self.metrics, "subscribing", explain=self.clients.explain):
            self._close_clients()
            return False
        log.info("joining group %s on %s (exactly-once: %s, client: %s)", self.clients.tuning.group_id, self.topic,
                 "on" if self.settings.exactly_once else "off", self.clients.name)
        return True

    def _subscribe(self) -> bool:
        self.consumer.subscribe(self)
        self.topology.observe(self.consumer.partition_count())
        return True

    def _watch_connections(self, stop: threading.Event) -> None:
        """Thread: the consumer's connection count each second (the main thread may be waiting on the broker)."""
        while not stop.wait(1.0):
            consumer = self.consumer
            try:
                count = consumer.connections()
            except Exception:  # noqa: BLE001 - closed or being replaced
                continue
            self.health.connections(count, time.monotonic())

    def _watch_group(self, now: float) -> None:
        """Replace a consumer that is stuck outside a stable group (`GroupHealth.stuck`)."""
        if self.health.stuck(self.consumer.group_stable(), now):
            self._replace_consumer()

    def _replace_consumer(self) -> None:
        """A new consumer (same settings, same group.instance.id) in place of one that is stuck or was fenced by
        its own stale membership: every partition is dropped unwritten (the group has moved on) and restored
        once assigned again."""
        self.metrics.error("group")
        with self._lock:
            self._resetting = True
            self._drop(self._owned | self._active | self._pending | self._suspended)
            self._owned = set()
            self._suspended.clear()
            self.metrics.assigned_partitions.set(0)
            self._abandon_producer()  # aborts an open transaction through the new producer's init
        try:
            self.consumer.close()
        except Exception as exc:  # noqa: BLE001
            log.debug("closing the replaced consumer: %s", exc)
        finally:
            self._resetting = False
        self.consumer = self.clients.consumer()
        self._subscribe()

    def _shutdown(self) -> None:
        if self.consumer is None:
            self._close_clients()
            return
        with self._lock:
            if self._fenced:  # another process owns our partitions now: write nothing (it restored from the last)
                self._drop(self._owned | self._active | self._pending | self._suspended)
            elif not self._needs_recovery and self._active:
                try:
                    self._checkpoint(wait=True)
                except ClientError as exc:
                    log.warning("final checkpoint failed (%s); the events since the last one will be "
                                "replayed by the next owner", exc)
        try:  # the revoke callback checkpoints (nothing left) and we leave the group (a static member too,
            # unless --stay-in-group; never when fenced: that would remove the process that replaced us)
            self.consumer.close(leave=self.settings.leave_on_shutdown and not self._fenced)
        except ClientError as exc:
            log.warning("closing the consumer: %s", exc)
        self.consumer = None
        self._close_clients()
        log.info("stopped: %s", ", ".join(f"{k} {v}" for k, v in self.totals.items()))

    def _close_clients(self) -> None:
        for client, kw in ((self.consumer, {}), (self.checkpoint and self.checkpoint.producer, {"timeout_s": 10}),
                           (self.restorer and self.restorer.reader, {})):
            if client is not None:
                try:
                    client.close(**kw)
                except Exception as exc:  # noqa: BLE001 - closing is best effort
                    log.debug("close: %s", exc)

    # ------------------------------------------------------------------ the hot path

    def _process(self, batch: Batch, received: float) -> None:
        parts = batch.partitions
        if not set(parts) <= self._active:  # not restored yet (or no longer ours): fetch those again later
            batch = self._only_active(batch)
            parts = batch.partitions
            if not parts:
                return
        offsets, keys = batch.offsets, batch.keys
        for p, last in dict(zip(parts, offsets)).items():  # each partition's last offset
            self._positions[p] = last + 1
        self.partitioner.check(parts, keys, self.consumer.partition_count())
        messages = batch.values
        if None in messages:  # a tombstone: an empty message (a dead letter)
            messages = [b"" if v is None else v for v in messages]
        topic = self.topic
        poll = Poll(messages=messages, partitions=np.array(parts, np.int64), received=received, keys=keys,
                    source=lambda i: {"topic": topic, "partition": parts[i], "offset": offsets[i]})
        result = self.engine.process(poll)
        lines, out_keys, dead = self._records(result, keys)
        cp = self.checkpoint
        if lines:
            where = self._output_partitions(keys, parts) if self.settings.co_partitioned else None
            cp.send_many(self.settings.topics.output, out_keys, lines,
                         [where.get(k) for k in out_keys] if where is not None else None)
            self.metrics.produced.labels("prediction").inc(len(lines))
        for key, value in dead:
            cp.send(self.settings.topics.dlq, key, value)
        if dead:
            self.metrics.produced.labels("dead_letter").inc(len(dead))
        t = self.totals
        t["polls"] += 1
        t["messages"] += len(messages)
        t["records"] += len(result.outputs)
        t["dead_letters"] += len(result.dead_letters)

    def _records(self, result, keys: list) -> tuple[list, list, list]:
        """(prediction records, their keys, [(key, value)] of the dead letters) of a poll's result. Building
        them cannot fail on any message (the engine vetted and sized them); a bug must not stop serve."""
        out = result.outputs
        try:
            lines = [line.encode() for line in out.json_lines()] if len(out) else []
            out_keys = [s.encode() for s in out.stream_ids]
            dead = [(limits.dead_letter_key(keys[i]), schema.encode_dead_letter(dl))
                    for dl, i in zip(result.dead_letters, result.dead_letter_index)]
        except Exception as exc:  # noqa: BLE001
            log.error("building the records of a poll raised %s: %s; its %d prediction records and %d dead letters "
                      "are skipped", type(exc).__name__, exc, len(out), len(result.dead_letters), exc_info=exc)
            self.metrics.error("internal")
            return [], [], []
        return lines, out_keys, dead

    def _output_partitions(self, keys: list, parts: list[int]) -> dict:
        """Co-partitioned outputs: key -> the input partition its prediction goes to (an input partition that
        the output topic does not have, after the input grew, is left to the key's hash)."""
        n = self.topology.output_partitions
        if n is None or max(parts) < n:
            return dict(zip(keys, parts))
        return {k: p for k, p in zip(keys, parts) if p < n}

    def _only_active(self, batch: Batch) -> Batch:
        """The records of active partitions; a pending partition is rewound to its first record here."""
        keep = Batch()
        first: dict[int, int] = {}
        for p, o, k, v in zip(batch.partitions, batch.offsets, batch.keys, batch.values):
            if p in self._active:
                keep.partitions.append(p)
                keep.offsets.append(o)
                keep.keys.append(k)
                keep.values.append(v)
            elif p in self._pending and p not in first:
                first[p] = o
        for p, o in first.items():
            self.consumer.seek(p, o)
        return keep

    # ------------------------------------------------------------------ checkpoints

    def _offsets(self) -> dict[int, int]:
        """Input partition -> next offset to process, where that is not committed yet."""
        return {p: pos for p, pos in self._positions.items() if p in self._active and pos != self._committed.get(p)}

    def _checkpoint(self, wait: bool = False) -> None:
        """Every --checkpoint-interval. At-least-once: start one (`Checkpoint.begin`) and go on processing;
        `_finish_checkpoint` commits its offsets once its records are acknowledged. `wait`, and under
        exactly-once: the whole checkpoint now."""
        cp = self.checkpoint
        offsets = self._offsets()
        work = bool(offsets) or cp.pending_work()
        t0 = time.perf_counter()
        try:
            if self.settings.exactly_once:
                cp.commit_transaction(self.engine.store, offsets, self.consumer.group_metadata())
                ok = True
            elif not wait:
                if cp.begin(self.engine.store, offsets):
                    self._checkpoint_started = t0
                return
            else:
                ok = cp.commit(self.engine.store, offsets, self._commit_offsets)
        except ClientError:
            self.metrics.checkpoints.labels("failed").inc()
            raise
        if ok:
            self._committed.update(offsets)
        if work:
            self._count_checkpoint(t0)

    def _finish_checkpoint(self) -> None:
        """At-least-once: commit the pending checkpoint's offsets once its records are acknowledged."""
        try:
            offsets = self.checkpoint.due()
        except ClientError:
            self.metrics.checkpoints.labels("failed").inc()
            raise
        if offsets is None:
            return
        ok = True
        if offsets:
            try:
                self._commit_offsets(offsets)
            except FATAL_ERRORS:
                raise
            except ClientError as exc:  # the state is durable: replayed events are deduplicated later
                ok = False
                self.metrics.error("commit")
                log.warning("offset commit failed (%s); the events since the last commit will be replayed "
                            "and deduplicated", exc)
        self.checkpoint.committed(ok)
        if ok:
            self._committed.update(offsets)
        self._count_checkpoint(self._checkpoint_started)

    def _commit_offsets(self, offsets: dict[int, int]) -> None:
        self.consumer.commit(offsets, self.settings.commit_timeout_ms / 1000)

    def _count_checkpoint(self, t0: float) -> None:
        self.metrics.checkpoints.labels("ok").inc()
        self.metrics.checkpoint_duration.observe(time.perf_counter() - t0)
        self.totals["checkpoints"] += 1

    # ------------------------------------------------------------------ rebalance callbacks (`RebalanceListener`)

    def revoke_checkpoint(self, parts: set[int]) -> dict[int, int] | None:
        """Checkpoint before giving partitions up. Returns the offsets still to commit (at-least-once),
        or None when there is nothing more to do."""
        with self._lock:
            if self._resetting:
                return None
            self.metrics.rebalances.labels("revoked").inc()
            log.info("partitions %s revoked", sorted(parts))
            self._suspended |= parts & self._active
            if self._needs_recovery or not self._active:
                return None
            offsets = self._offsets()
            try:
                t0 = time.perf_counter()
                if self.settings.exactly_once:
                    self.checkpoint.commit_transaction(self.engine.store, offsets, self.consumer.group_metadata())
                    self._committed.update(offsets)
                    self.metrics.checkpoint_duration.observe(time.perf_counter() - t0)
                    self.metrics.checkpoints.labels("ok").inc()
                    return None
                self.checkpoint.write(self.engine.store)
                self.metrics.checkpoint_duration.observe(time.perf_counter() - t0)
                self.metrics.checkpoints.labels("ok").inc()
                return offsets
            except Exception as exc:  # noqa: BLE001 - never raise into the client's callback
                self.metrics.checkpoints.labels("failed").inc()
                self.metrics.error("listener")
                log.warning("checkpoint on revocation failed (%s: %s); dropping the state of the revoked "
                            "partitions, the next owner replays from the last checkpoint", type(exc).__name__, exc)
                self._drop(self._suspended)
                self._suspended.clear()
                self._abandon_producer()
                return None

    def revoke_done(self, offsets: dict[int, int], committed: bool) -> None:
        with self._lock:
            if self._resetting:
                return
            if committed:
                self._committed.update(offsets)
                self.checkpoint.offsets_committed()
            elif offsets:
                self.metrics.error("commit")
            try:
                self.checkpoint.write_tombstones()
            except Exception as exc:  # noqa: BLE001
                self.metrics.error("listener")
                log.warning("writing tombstones on revocation failed (%s: %s)", type(exc).__name__, exc)
                self._abandon_producer()

    def assigned(self, new: set[int]) -> None:
        with self._lock:
            if self._resetting:
                return
            try:
                self.metrics.rebalances.labels("assigned").inc()
                kept = (self._suspended | self._active) & new
                if self._needs_recovery:
                    kept = set()
                self._drop((self._suspended | self._active | self._pending) - kept)
                for p in kept & self._suspended & set(self._positions):  # revoked and handed back (eager)
                    self.consumer.seek(p, self._positions[p])
                self._suspended.clear()
                fresh = new - kept
                self.consumer.pause(sorted(fresh))
                self._owned = new
                self._active = kept
                self._pending = fresh
                self.metrics.assigned_partitions.set(len(new))
                log.info("partitions %s assigned (%s kept in memory, %s to restore)", sorted(new), sorted(kept),
                         sorted(fresh))
                if not fresh:
                    self._set_ready()
            except Exception as exc:  # noqa: BLE001
                self.metrics.error("listener")
                log.warning("handling the assignment failed (%s: %s); rewinding", type(exc).__name__, exc)
                self._needs_recovery = True

    def unassigned(self, parts: set[int]) -> None:
        """Cooperative rebalancing: the revoked partitions go for good (checkpointed by revoke_checkpoint)."""
        with self._lock:
            if self._resetting:
                return
            self._drop(parts & (self._suspended | self._active | self._pending))
            self._suspended -= parts
            self._owned -= parts
            self.metrics.assigned_partitions.set(len(self._owned))

    def lost(self, parts: set[int]) -> None:
        with self._lock:
            if self._resetting:
                return
            self.metrics.rebalances.labels("lost").inc()
            log.warning("partitions %s lost (forced out of the group): dropping their state unwritten", sorted(parts))
            self._drop(parts | self._suspended)
            self._suspended.clear()
            self._owned -= parts
            self.metrics.assigned_partitions.set(len(self._owned))
            if self.settings.exactly_once:
                try:
                    self.checkpoint.abort()
                except Exception as exc:  # noqa: BLE001
                    log.warning("aborting the transaction failed (%s: %s)", type(exc).__name__, exc)
                    self._abandon_producer()

    def _drop(self, partitions) -> None:
        for p in sorted(partitions):
            self.engine.drop_partition(p)
            self._positions.pop(p, None)
            self._committed.pop(p, None)
        self.checkpoint.forget_partitions(partitions)
        self._active -= set(partitions)
        self._pending -= set(partitions)

    def _abandon_producer(self) -> None:
        """Let the records in flight resolve (none may land later), close the producer and ask the main
        loop for a new one."""
        self._close_producer()
        self._needs_recovery = True

    def _close_producer(self) -> None:
        cp = self.checkpoint
        cp.settle()
        if cp.stuck:  # its sender keeps retrying what never resolves; keep it from close() in __del__
            self._abandoned = (self._abandoned + [cp.producer])[-4:]
        else:
            try:
                cp.abort()
            except Exception as exc:  # noqa: BLE001 - the next producer's init_transactions aborts it anyway
                log.debug("abort: %s", exc)
            try:
                cp.producer.close(timeout=5)
            except Exception as exc:  # noqa: BLE001
                log.debug("closing the producer: %s", exc)
        cp.discard()
        cp.closed = True
        cp.stuck = False

    # ------------------------------------------------------------------ restore and recovery (main thread)

    def _restore_pending(self) -> None:
        with self._lock:
            parts = sorted(self._pending)
            if parts:
                self.topology.observe(self.consumer.partition_count())
                self.topology.ensure_changelog(parts[-1] + 1)  # adds them (--create-topics) or stops
            try:
                stats = self.restorer.restore(self.engine.store, parts)
            except StateMismatch as exc:
                raise UserError(f"cannot restore partitions {parts} from {self.settings.topics.changelog}: {exc}; "
                                "raise --max-streams or run more instances") from None
            self._active |= set(parts)
            self._pending -= set(parts)
            self.consumer.resume(parts)
            self.engine.metrics.active_streams.set(len(self.engine.store))
        log.info("restored %d streams of partitions %s from %s in %.2fs (%d records, %d reset to the new model, "
                 "%d unreadable)", stats.streams, parts, self.settings.topics.changelog, stats.seconds, stats.records,
                 stats.reset, stats.invalid)
        self._set_ready()

    def _recover(self) -> None:
        """Rewind to the last checkpoint (see the module docstring)."""
        with self._lock:
            self.metrics.recoveries.inc()
            self.totals["recoveries"] += 1
            cp = self.checkpoint
            if not cp.closed:
                self._close_producer()
            cp.producer = self.clients.producer()
            cp.closed = False
            cp.write_tombstones()
            owned = sorted(self._owned)
            self._drop(set(owned) | self._suspended)
            self._suspended.clear()
            self.consumer.rewind(owned)  # to the committed offsets (or by auto.offset.reset)
            self.consumer.pause(owned)
            self._pending = set(owned)
            self._active = set()
            self._needs_recovery = False
        log.info("rewound to the last checkpoint: restoring partitions %s", owned)

    def _set_ready(self) -> None:
        self.ready.set()
        self.clients.serving()  # failures from now on are waited out, not probed

    def _await_partitions(self, topic: str, count: int) -> None:
        """Wait (a metadata refresh at most) until the producer knows `count` partitions of `topic`: a client
        refuses a record for a partition its metadata does not have yet."""
        deadline = time.monotonic() + self.clients.tuning.metadata_max_age_ms / 1000 + 10
        while self.checkpoint.producer.partition_count(topic) < count:
            if time.monotonic() > deadline:
                raise ClientTimeout(f"the producer did not learn the {count} partitions of {topic} in time")
            time.sleep(0.1)

    def _update_lag(self) -> None:
        lags = {}
        for p in self._owned:
            try:
                hw = self.consumer.highwater(p)
            except Exception:  # noqa: BLE001 - not assigned any more
                continue
            pos = self._positions.get(p, self._committed.get(p))
            if hw is not None and pos is not None:
                lags[p] = max(0, hw - pos)
        self.metrics.set_lag(lags)


# Under exactly-once a poll of more message bytes than this (a chunk of ~30k steps takes about a second to
# apply) starts on a committed transaction: the broker aborts a transaction left open longer than
# --transaction-timeout-ms, and a poll that always outlives it would be rewound and redone forever.
HEAVY_POLL_BYTES = 256 * 1024


def _heavy(batch: Batch) -> bool:
    return sum(map(len, filter(None, batch.values))) > HEAVY_POLL_BYTES

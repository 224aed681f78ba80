"""Restore: read changelog partitions to their end and load their streams into the state store.

The reader is a `streamer.kafka.client.Reader` (either client): a group-less consumer (manual assignment,
read_committed: under exactly-once only committed state counts). "The end" is the end offset at the start of the read (the last stable
offset under read_committed); nobody else writes these partitions while we own them.

A record made by another model version is never loaded as is. `--on-model-change`:
- ``reset`` (default): the old state is discarded and the stream starts again from the model's initial
  state, keeping its last step, so replayed events are still recognised as duplicates and new steps go
  on from there. The stream is re-checkpointed under the new version at the next checkpoint.
- ``refuse``: `ModelChanged` is raised and serve stops (exit 2) without touching the changelog, so
  the previous model can be rolled back in.
Both are logged and counted in ``streamer_kafka_state_model_changes_total{action}``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from streamer.errors import UserError
from streamer.kafka import changelog
from streamer.state import StateMismatch, StreamRecord

log = logging.getLogger(__name__)

MODEL_CHANGE_POLICIES = ("reset", "refuse")


class ModelChanged(UserError):
    """The changelog holds state of another model version and --on-model-change is refuse."""


@dataclass
class RestoreStats:
    partitions: list[int]
    records: int = 0  # changelog records read
    streams: int = 0  # streams loaded
    reset: int = 0  # of which: another model's state, reset
    invalid: int = 0  # unreadable records, skipped
    seconds: float = 0.0


class Restorer:
    """Loads changelog partitions into a `StateStore` (`reader`: a `streamer.kafka.client.Reader`)."""

    def __init__(self, reader, changelog_topic: str, *, on_model_change: str = "reset", metrics=None,
                 timeout_s: float = 120.0):
        if on_model_change not in MODEL_CHANGE_POLICIES:
            raise ValueError(f"on_model_change must be one of {MODEL_CHANGE_POLICIES}, got {on_model_change!r}")
        self.reader = reader
        self.topic = changelog_topic
        self.on_model_change = on_model_change
        self.metrics = metrics
        self.timeout_s = timeout_s

    def read(self, partitions: list[int]) -> dict[int, dict[bytes, bytes]]:
        """The latest value per stream of each changelog partition (tombstoned streams left out)."""
        tables: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
        if partitions:
            self.reader.read(self.topic, list(partitions), self.timeout_s,
                             lambda p, keys, values: changelog.fold(zip(keys, values), tables[p]))
        return tables

    def restore(self, store, partitions: list[int]) -> RestoreStats:
        """Read `partitions` and load their streams into `store` (their current state there is replaced)."""
        t0 = time.perf_counter()
        stats = self.load(store, self.read(sorted(partitions)))
        stats.seconds = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.restores.inc()
            self.metrics.restore_duration.observe(stats.seconds)
            self.metrics.restored_streams.inc(stats.streams)
        return stats

    def load(self, store, tables: dict[int, dict[bytes, bytes]]) -> RestoreStats:
        """Load what `read` returned: {partition: {key: value}} (applies --on-model-change).

        A stream with a record in two partitions (its events were split across input partitions: see
        `streamer.routing`) is loaded once, from its most recent record, and logged; `streams` counts
        distinct streams."""
        stats = RestoreStats(partitions=sorted(tables))
        latest: dict[str, StreamRecord] = {}
        reset_ids: set[str] = set()
        split: list[tuple[str, int, int]] = []
        for partition, table in tables.items():
            stats.records += len(table)
            records, reset = self._decode(store, partition, table, stats)
            reset_ids.update(r.stream_id for r in reset)
            for record in records:
                other = latest.get(record.stream_id)
                if other is not None:
                    split.append((record.stream_id, other.partition, record.partition))
                    if (other.last_seen, other.last_step) >= (record.last_seen, record.last_step):
                        continue
                latest[record.stream_id] = record
        if split:
            sid, a, b = split[0]
            log.error("changelog %s: %d stream(s) have state in two partitions, e.g. %r in %d and %d: their events "
                      "were split across input partitions (key events by stream_id, murmur2 partitioner); the most "
                      "recent state of each is restored", self.topic, len(split), sid[:80], a, b)
        records = list(latest.values())
        if records:
            store.restore_many(records)
            stats.streams = len(records)
        reset = [r for r in records if r.stream_id in reset_ids]
        if reset:  # checkpoint them again under this model's version
            slots = np.array([store.slot_of(r.stream_id) for r in reset], np.int64)
            store.write(slots, np.stack([r.state for r in reset]), np.array([r.last_step for r in reset]))
        return stats

    def _decode(self, store, partition: int, table: dict[bytes, bytes],
                stats: RestoreStats) -> tuple[list[StreamRecord], list[StreamRecord]]:
        out, reset = [], []
        version, size = store.model_version, store.state_size
        for key, value in table.items():
            try:
                record = changelog.decode(key, value)
            except StateMismatch as exc:
                stats.invalid += 1
                if self.metrics is not None:
                    self.metrics.error("changelog_record")
                log.warning("changelog %s partition %d: skipping an unreadable record for key %r: %s",
                            self.topic, partition, key[:80], exc)
                continue
            record.partition = partition
            if record.model_version != version or record.state_size != size:
                record = self._model_changed(record, store, partition)
                reset.append(record)
            out.append(record)
        if reset:
            stats.reset += len(reset)
            log.warning("changelog %s partition %d: %d stream state(s) were made by another model version; "
                        "their state is reset to this model's initial state (%s), their step counters kept "
                        "(--on-model-change reset)", self.topic, partition, len(reset), version)
        return out, reset

    def _model_changed(self, record: StreamRecord, store, partition: int) -> StreamRecord:
        if self.on_model_change == "refuse":
            if self.metrics is not None:
                self.metrics.model_changes.labels("refused").inc()
            raise ModelChanged(
                f"changelog {self.topic} holds the state of stream {record.stream_id!r} made by model "
                f"{record.model_version} (state size {record.state_size}), but this is model {store.model_version} "
                f"(state size {store.state_size}); refusing to start (--on-model-change refuse). Serve the "
                "previous model, or restart with --on-model-change reset to discard the old states")
        if self.metrics is not None:
            self.metrics.model_changes.labels("reset").inc()
        return StreamRecord(stream_id=record.stream_id, state=np.array(store.initial_state, np.float32),
                            last_step=record.last_step, last_seen=record.last_seen,
                            model_version=store.model_version, partition=partition)

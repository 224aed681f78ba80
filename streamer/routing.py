"""Routing checks: does each event arrive where its stream's other events are? (client-independent)

A transport that partitions its input (Kafka) keeps a stream's steps in order, and its state in one
place, only if every event of the stream lands in the same partition. That holds when every producer keys
each event by its ``stream_id`` (UTF-8) and all producers hash keys the same way (Kafka's Java client and
kafka-python use murmur2; kcat's default does not: give it ``-X partitioner=murmur2_random``). Two
mistakes are made visible here, whatever the transport:

- **key mismatch**: a message without a key, or whose key is not its ``stream_id``. Counted in
  ``streamer_key_mismatch_total{kind="missing"|"different"}`` and logged (the first one at once, then at
  most one summary a minute). ``--on-key-mismatch accept`` (default) serves it anyway; ``reject`` turns
  it into a ``key_mismatch`` dead letter before it changes any state.
- **split stream**: an event of a stream whose state came from another partition (its producers
  disagree on the partition). Counted in ``streamer_split_streams_total`` and logged with both
  partitions (rate-limited the same way). The event is served on the state this process holds; if the
  two partitions are served by different processes, each holds a state of its own and the stream's
  predictions are wrong from then on, which is why it is logged as an error.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from streamer import schema
from streamer.config import KEY_MISMATCH_POLICIES
from streamer.schema import Events, Rejection

log = logging.getLogger("streamer.routing")


class Throttled:
    """Logs the first occurrence of a problem at once, then at most one summary line per `every` seconds."""

    def __init__(self, logger: logging.Logger, level: int, every: float = 60.0, clock=time.monotonic):
        self.logger, self.level, self.every, self.clock = logger, level, every, clock
        self._last: float | None = None
        self._since = 0

    def __call__(self, count: int, message: str, *args) -> None:
        now = self.clock()
        self._since += count
        if self._last is not None and now - self._last < self.every:
            return
        suffix = "" if self._last is None else f" ({self._since} such since the last report)"
        self.logger.log(self.level, message + suffix, *args)
        self._last = now
        self._since = 0


class RoutingChecks:
    """The key and split-stream checks of one engine (see the module docstring)."""

    def __init__(self, metrics, policy: str = "accept"):
        if policy not in KEY_MISMATCH_POLICIES:
            raise ValueError(f"on_key_mismatch must be one of {', '.join(KEY_MISMATCH_POLICIES)}, got {policy!r}")
        self.metrics = metrics
        self.policy = policy
        self._log_keys = Throttled(log, logging.WARNING)
        self._log_splits = Throttled(log, logging.ERROR)

    def check_keys(self, events: Events, keys: Sequence[bytes | None]) -> tuple[Events, list[Rejection]]:
        """Compare each event's message key with its stream_id; count, log, and under ``reject`` take the
        mismatches out of `events` (returned as rejections)."""
        if not len(events):
            return events, []
        got = [keys[i] for i in events.index.tolist()]
        want = [s.encode("utf-8") for s in events.stream_ids]
        if got == want:  # the usual case, one comparison in C
            return events, []
        bad = np.array([k != w for k, w in zip(got, want)], bool)
        missing = sum(1 for e in np.flatnonzero(bad).tolist() if got[e] is None)
        self.metrics.count_key_mismatches("missing", missing)
        self.metrics.count_key_mismatches("different", int(bad.sum()) - missing)
        first = int(np.flatnonzero(bad)[0])
        key = got[first]
        self._log_keys(int(bad.sum()), "message key %s for stream_id %r%s: events must be keyed by their stream_id "
                       "(UTF-8) so that a stream stays in one partition (--on-key-mismatch %s)",
                       "missing" if key is None else repr(key[:80]), events.stream_ids[first][:80],
                       "" if events.partitions is None else f" (partition {int(events.partitions[first])})",
                       self.policy)
        if self.policy == "accept":
            return events, []
        rejections = []
        for e in np.flatnonzero(bad).tolist():
            key = got[e]
            what = "has no key" if key is None else f"is keyed {_show(key)}"
            rejections.append(Rejection(int(events.index[e]), schema.KEY_MISMATCH,
                                        f"the message {what}, but its stream_id is {events.stream_ids[e][:80]!r}: "
                                        "key each event by its stream_id (--on-key-mismatch reject)"))
        return schema.select(events, ~bad), rejections

    def split_streams(self, moved: list[tuple[str, int, int]]) -> None:
        """Count and log streams whose event came from another partition than their state."""
        if not moved:
            return
        self.metrics.split_streams.inc(len(moved))
        sid, old, new = moved[0]
        self._log_splits(len(moved), "stream %r is split across partitions %d and %d: its producers send its events "
                         "to different partitions (key every event by its stream_id and use the murmur2 "
                         "partitioner everywhere; kcat: -X partitioner=murmur2_random)", sid[:80], old, new)


def _show(key: bytes) -> str:
    return repr(key[:80]) + ("..." if len(key) > 80 else "")

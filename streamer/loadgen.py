"""Load generator for the Q&A task: many interleaved event streams, rate-limited (no Kafka here).

`EventGenerator` yields the events of ``streams`` concurrent streams in a random interleaving: at every
event a random open stream sends its next step (or chunk of steps), so steps stay in order within a
stream while streams are mixed. Each stream's features come from `models.data.synthetic_sequences`
(uniform [0, 1)^5, lengths uniform in min_len..max_len), so they are exactly the Q&A task's inputs.

- one pass (``total_streams=streams``, the default): every stream runs to its last step, then it stops;
- continuous (``total_streams=None``): a stream that finishes is replaced by a new one at once, so
  ``streams`` stay open; the caller stops it (duration, event count).

`TokenBucket` paces the sends; `run_load` puts it together over any `send(key, value)` sink and returns
a `LoadSummary`. Used by `streamer produce` and by the benchmarks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from models.data import QA_FEATURE_SIZE, synthetic_sequences

DEFAULT_MIN_LEN = 10
DEFAULT_MAX_LEN = 100


@dataclass(frozen=True)
class Event:
    """One message: its stream, first step, features (k, F) float32 and whether it closes the stream."""

    stream_id: str
    step: int
    features: np.ndarray
    last: bool  # the stream's final event

    def to_dict(self, ts_ms: int | None = None, chunked: bool = False, mark_end: bool = False) -> dict:
        feats = self.features.tolist() if chunked else self.features[0].tolist()
        obj = {"stream_id": self.stream_id, "step": self.step, "features": feats}
        if ts_ms is not None:
            obj["ts"] = ts_ms
        if mark_end and self.last:
            obj["end"] = True
        return obj


class EventGenerator:
    """Interleaved events of ``streams`` concurrent Q&A streams (see the module docstring).

    ``chunk`` > 0 makes each event carry up to ``chunk`` consecutive steps (a stream's last chunk may
    be shorter); 0 gives one step per event. Deterministic for a given ``seed``.
    """

    def __init__(self, streams: int, *, min_len: int = DEFAULT_MIN_LEN, max_len: int = DEFAULT_MAX_LEN,
                 chunk: int = 0, total_streams: int | None = -1, seed: int | None = None,
                 prefix: str = "s-", feature_size: int = QA_FEATURE_SIZE):
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        if not 1 <= min_len <= max_len:
            raise ValueError(f"lengths must satisfy 1 <= min_len <= max_len, got {min_len}..{max_len}")
        if chunk < 0:
            raise ValueError(f"chunk must be >= 0, got {chunk}")
        if total_streams == -1:
            total_streams = streams
        if total_streams is not None and total_streams < streams:
            raise ValueError(f"total_streams ({total_streams}) must be >= streams ({streams}) or None")
        self.streams = streams
        self.min_len, self.max_len = min_len, max_len
        self.step_size = max(chunk, 1)
        self.chunked = chunk > 0
        self.total_streams = total_streams
        self.prefix = prefix
        self.feature_size = feature_size
        self._rng = np.random.default_rng(seed)
        self.started = 0  # streams opened so far
        self.ended = 0  # streams that sent their last event

    def _new_stream(self) -> list:
        """[stream_id, features (T, F), next step]."""
        x = synthetic_sequences(1, self.min_len, self.max_len, self.feature_size, seed=self._rng)[0].features
        sid = f"{self.prefix}{self.started}"
        self.started += 1
        return [sid, x, 0]

    def __iter__(self) -> Iterator[Event]:
        rng = self._rng
        active = [self._new_stream() for _ in range(self.streams)]
        picks = np.empty(0, dtype=np.int64)
        used = 0
        while active:
            if used == len(picks):  # draw random numbers in blocks: a numpy call per event is slow
                picks = rng.random(4096)
                used = 0
            i = int(picks[used] * len(active))
            used += 1
            stream = active[i]
            sid, x, pos = stream
            end = min(pos + self.step_size, len(x))
            last = end == len(x)
            yield Event(sid, pos, x[pos:end], last)
            if not last:
                stream[2] = end
                continue
            self.ended += 1
            if self.total_streams is None or self.started < self.total_streams:
                active[i] = self._new_stream()
            else:  # swap-remove: order among open streams does not matter
                active[i] = active[-1]
                active.pop()


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; `wait(n)` sleeps until n are available.

    ``rate`` 0 (or less) means unlimited. ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate / 20)  # 50 ms of credit
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._last = clock()

    def wait(self, n: float = 1.0) -> float:
        """Take ``n`` tokens, sleeping as needed; returns the seconds slept."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        delay = -self._tokens / self.rate
        self._sleep(delay)
        return delay


@dataclass
class LoadSummary:
    events: int = 0
    steps: int = 0
    bytes: int = 0
    streams_started: int = 0
    streams_ended: int = 0
    elapsed: float = 0.0
    stopped_by: str = "done"  # done (every stream finished), duration, events, interrupted
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.elapsed if self.elapsed > 0 else 0.0

    def line(self, prog: str, target: str) -> str:
        return (f"{prog}: {self.events} events ({self.steps} steps, {self.bytes} bytes) of "
                f"{self.streams_started} streams ({self.streams_ended} ended) to {target} in "
                f"{self.elapsed:.2f} s ({self.rate:,.0f} events/s); stopped: {self.stopped_by}")


def encode(event: Event, chunked: bool, mark_end: bool, ts_ms: int | None) -> bytes:
    return json.dumps(event.to_dict(ts_ms, chunked, mark_end), separators=(",", ":")).encode()


def run_load(generator: EventGenerator, send: Callable[[bytes, bytes], None], *, rate: float = 0.0,
             duration: float | None = None, max_events: int | None = None, mark_end: bool = False,
             timestamps: bool = True, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep,
             should_stop: Callable[[], bool] | None = None,
             progress: Callable[[LoadSummary], None] | None = None, progress_every: float = 10.0) -> LoadSummary:
    """Send the generator's events through ``send(key, value)`` at up to ``rate`` events/s.

    Stops when the generator is exhausted, after ``duration`` seconds, after ``max_events`` events,
    or when ``should_stop()`` turns true (checked between events). ``progress(summary)`` is called
    every ``progress_every`` seconds (summary.elapsed is up to date then).
    """
    bucket = TokenBucket(rate, clock=clock, sleep=sleep)
    summary = LoadSummary()
    t0 = clock()
    deadline = None if duration is None else t0 + duration
    events = iter(generator)
    next_report = t0 + progress_every if progress is not None and progress_every > 0 else None
    while True:
        # Check the limits before drawing the next event, so nothing is drawn and then dropped.
        if max_events is not None and summary.events >= max_events:
            summary.stopped_by = "events"
            break
        if deadline is not None and clock() >= deadline:
            summary.stopped_by = "duration"
            break
        if should_stop is not None and should_stop():
            summary.stopped_by = "interrupted"
            break
        event = next(events, None)
        if event is None:
            break
        bucket.wait(1)
        ts = int(time.time() * 1000) if timestamps else None
        value = encode(event, generator.chunked, mark_end, ts)
        send(event.stream_id.encode(), value)
        summary.events += 1
        summary.steps += len(event.features)
        summary.bytes += len(value)
        summary.streams_started += event.step == 0
        summary.streams_ended += event.last
        if next_report is not None and clock() >= next_report:
            summary.elapsed = clock() - t0
            progress(summary)
            next_report += progress_every
    summary.elapsed = clock() - t0
    return summary

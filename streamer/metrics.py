"""Prometheus metrics of the streaming engine (prefix ``streamer_``, base units, no per-stream labels).

A `Metrics` object owns every metric object and registers them in the registry it is given (a fresh
`CollectorRegistry` per test, per process in production). Transports add their own metrics by
subclassing `Metrics` (or by registering more metrics in `metrics.registry`).

Histograms that get one value per event (latency, event-time lag) use `BulkHistogram`: it takes a
whole numpy array per poll, so the per-event cost stays a few nanoseconds.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from streamer import schema

# Seconds, sized for milliseconds: 50 us .. 10 s.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Event-time lag, seconds: 1 ms .. 1 h.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# Streams per batched step call.
WAVE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

EVENT_OUTCOMES = ("applied", "duplicate", "invalid", "rejected", "refused", "failed")
STEP_OUTCOMES = ("applied", "duplicate", "rejected")
FREE_REASONS = ("end", "expired", "evicted", "dropped")
KEY_MISMATCH_KINDS = ("missing", "different")


class BulkHistogram:
    """A Prometheus histogram fed with numpy arrays (or one value repeated `count` times).

    Registered as a custom collector; its samples are the usual ``_bucket``/``_sum``/``_count``.
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry):
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._bound_list = self.bounds.tolist()
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # last: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size == 0:
            return
        idx = np.searchsorted(self.bounds, values, side="left")  # value <= bound goes in that bucket
        add = np.bincount(idx, minlength=len(self._counts))
        total = float(values.sum())
        with self._lock:
            self._counts += add
            self._sum += total

    def observe(self, value: float, count: int = 1) -> None:
        if count <= 0:
            return
        i = bisect_left(self._bound_list, value)  # same bucket as searchsorted(side="left"), cheaper for one value
        with self._lock:
            self._counts[i] += count
            self._sum += value * count

    def collect(self):
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        buckets = [(_bound_text(b), c) for b, c in zip(self.bounds.tolist(), cumulative)]
        buckets.append(("+Inf", cumulative[-1]))
        family = HistogramMetricFamily(self.name, self.documentation, labels=[])
        family.add_metric([], buckets, total)
        yield family

    def describe(self):
        yield HistogramMetricFamily(self.name, self.documentation, labels=[])


def _bound_text(b: float) -> str:
    return floatToGoString(b)


class Metrics:
    """Every engine metric, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter("streamer_events_total", "Input events by outcome: applied (at least one step "
                              "applied), duplicate (every step already applied), invalid (schema: dead letter), "
                              "rejected (gap under --on-gap reject, or key mismatch under --on-key-mismatch "
                              "reject: dead letter), refused (stream cap, or output too large: dead letter), "
                              "failed (handling it raised an unexpected error: dead letter internal_error)",
                              ["outcome"], registry=r)
        self.steps = Counter("streamer_steps_total", "Timesteps by outcome: applied, duplicate (skipped), rejected",
                             ["outcome"], registry=r)
        self.predictions = Counter("streamer_predictions_total", "Per-step predictions produced", registry=r)
        self.dead_letters = Counter("streamer_dead_letters_total", "Dead letters by reason (the error code)",
                                    ["reason"], registry=r)
        self.key_mismatches = Counter("streamer_key_mismatch_total", "Events whose message key is missing or "
                                      "is not their stream_id (served, or dead letters under --on-key-mismatch "
                                      "reject)", ["kind"], registry=r)
        self.split_streams = Counter("streamer_split_streams_total", "Events of a stream that arrived on another "
                                     "partition than the stream's state (its producers disagree on the "
                                     "partitioner or the key)", registry=r)
        self.gaps = Counter("streamer_step_gaps_total", "Steps that skipped ahead of the stream's next step "
                            "(handled by --on-gap)", registry=r)
        self.resets = Counter("streamer_stream_resets_total", "Events with reset=true", registry=r)
        self.streams_started = Counter("streamer_streams_started_total", "Streams given a fresh state", registry=r)
        self.streams_freed = Counter("streamer_streams_freed_total", "Stream states freed by reason: end, expired "
                                     "(idle past --ttl), evicted (least recently used at --max-streams), dropped "
                                     "(partition revoked)", ["reason"], registry=r)
        self.active_streams = Gauge("streamer_active_streams", "Streams with state held in memory", registry=r)
        self.state_capacity = Gauge("streamer_state_capacity_streams", "Stream slots allocated in the state arrays",
                                    registry=r)
        self.polls = Counter("streamer_polls_total", "Polls (batches of messages) processed", registry=r)
        self.wave_size = Histogram("streamer_wave_size_streams", "Streams advanced by one batched model step",
                                   buckets=WAVE_BUCKETS, registry=r)
        self.poll_duration = Histogram("streamer_poll_duration_seconds",
                                       "Time from a poll's arrival until its outputs are ready (decode, validate, "
                                       "step; before the sink)", buckets=LATENCY_BUCKETS, registry=r)
        self.event_latency = BulkHistogram("streamer_event_latency_seconds",
                                           "Per event: time from its poll's arrival until its prediction is ready "
                                           "(before the sink)", LATENCY_BUCKETS, r)
        self.event_lag = BulkHistogram("streamer_event_lag_seconds", "Per event with ts: processing time minus "
                                       "event time", LAG_BUCKETS, r)
        self.model = Info("streamer_model", "The served model", registry=r)
        for outcome in EVENT_OUTCOMES:
            self.events.labels(outcome)
        for outcome in STEP_OUTCOMES:
            self.steps.labels(outcome)
        for reason in schema.ERROR_CODES:
            self.dead_letters.labels(reason)
        for reason in FREE_REASONS:
            self.streams_freed.labels(reason)
        for kind in KEY_MISMATCH_KINDS:
            self.key_mismatches.labels(kind)
        # Bound children for the hot path (labels() does a dict lookup under a lock).
        self._events = {k: self.events.labels(k) for k in EVENT_OUTCOMES}
        self._steps = {k: self.steps.labels(k) for k in STEP_OUTCOMES}
        self._freed = {k: self.streams_freed.labels(k) for k in FREE_REASONS}

    def set_model(self, model) -> None:
        self.model.info({"version": str(model.version), "feature_size": str(model.feature_size),
                         "output_size": str(model.output_size), "state_size": str(model.state_size)})

    def count_events(self, outcome: str, n: int) -> None:
        if n:
            self._events[outcome].inc(n)

    def count_steps(self, outcome: str, n: int) -> None:
        if n:
            self._steps[outcome].inc(n)

    def count_freed(self, reason: str, n: int) -> None:
        if n:
            self._freed[reason].inc(n)

    def count_key_mismatches(self, kind: str, n: int) -> None:
        if n:
            self.key_mismatches.labels(kind).inc(n)

    def count_dead_letters(self, codes: Iterable[str]) -> None:
        for code in codes:
            self.dead_letters.labels(code).inc()

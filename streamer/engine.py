"""The stateful step engine: polls of events in, per-step predictions out, many streams at once.

For each poll the engine

1. decodes and validates the messages (`streamer.schema.decode`; token ids for a model that starts with an
   Embedding); each bad one becomes a dead letter;
2. expires idle streams (``ttl``), then finds or creates each event's state slot (`StateStore.acquire`);
3. applies the steps in *waves*: wave w holds the w-th pending step of every stream that has one, so a
   stream's steps run strictly in order while all streams advance together in one batched
   ``model.step`` call per wave (gather state rows by slot -> step -> scatter);
4. returns the predictions column by column (`Outputs`) plus the dead letters.

One bad message costs one dead letter, never the poll: `process` checks the message keys when the
transport has them (`streamer.routing`), refuses events whose prediction could not fit the output
topic even split (`streamer.limits`), and applies the poll under a savepoint of its streams' state. If
decoding or applying raises anything unexpected (a bug, or a model that fails on some input), the
state is rolled back to the savepoint and the poll is done again message by message: the message that
raises becomes an ``internal_error`` dead letter (logged with its traceback), every other one is applied
exactly once. Prediction records that would exceed the output topic's limit are split into several
records of consecutive steps; dead letters are cut to fit theirs.

Per-step rules (a stream's "last" step is -1 before its first one):

- ``step`` absent: the step is last+1 (appended).
- ``step`` <= last: a duplicate, skipped (no prediction, no state change); counted.
- ``step`` > last+1: a gap, handled by ``on_gap``: ``apply`` (default: apply it on the current state,
  counted), ``reject`` (dead letter ``step_gap``, state unchanged), ``reset`` (start the stream over
  from a fresh state at that step). A new stream's first step is expected to be 0.
- A chunk with ``step`` s covers s..s+k-1; an already applied prefix is skipped as duplicates, the rest
  is applied, and its record starts at the first applied step.
- ``reset``: the state is dropped before the event's steps; the step counter restarts at the event's
  step (or 0 when absent).
- ``end``: the state is freed after the event's steps are applied (not when the event was a duplicate or
  rejected). A later event with that stream id starts a new stream.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _quote
from typing import Callable, Iterator

import numpy as np

from streamer import limits, schema
from streamer.config import EngineConfig
from streamer.metrics import Metrics
from streamer.routing import RoutingChecks
from streamer.schema import Events, Rejection
from streamer.state import StateStore
from streamer.transports import Poll

try:  # a C JSON encoder: float32 rows to text ~10x faster than numpy's (same text where `_row_texts` uses it)
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; numpy alone gives the same text
    _orjson = None

_APPLIED, _DUPLICATE, _REJECTED = 0, 1, 2
log = logging.getLogger("streamer.engine")
# Dead letters that are the engine's own decisions, by the streamer_events_total outcome they count as.
_OUTCOME_OF = {schema.KEY_MISMATCH: "rejected", schema.OUTPUT_TOO_LARGE: "refused", schema.INTERNAL_ERROR: "failed"}
_SCHEMA_CODES = frozenset(schema.SCHEMA_ERROR_CODES)


@dataclass
class Outputs:
    """The predictions of one poll, in input order.

    One record per event that applied at least one step: `stream_ids[r]`, `steps[r]` (its first applied
    step), `ts[r]`, `chunk[r]`, and its predictions `predictions[start[r] : start[r] + length[r]]`.
    `row_steps` gives the step of every prediction row.
    """

    model_version: str
    stream_ids: list[str]
    steps: np.ndarray
    ts: list
    chunk: np.ndarray
    start: np.ndarray
    length: np.ndarray
    predictions: np.ndarray  # (N, O) float32, one row per applied step
    row_steps: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.stream_ids)

    def row_stream_index(self) -> np.ndarray:
        """(N,) the record index of every prediction row."""
        return np.repeat(np.arange(len(self.stream_ids)), self.length)

    def records(self) -> Iterator[dict]:
        """The output records as dicts (see `streamer.schema` for the shape)."""
        preds = self.predictions.tolist()
        steps = self.steps.tolist()
        starts = self.start.tolist()
        lengths = self.length.tolist()
        chunk = self.chunk.tolist()
        for r, sid in enumerate(self.stream_ids):
            rec: dict = {"stream_id": sid, "step": steps[r]}
            a = starts[r]
            if chunk[r]:
                rec["predictions"] = preds[a:a + lengths[r]]
            else:
                rec["prediction"] = preds[a]
            rec["model"] = self.model_version
            if self.ts[r] is not None:
                rec["ts"] = self.ts[r]
            yield rec

    def json_lines(self) -> list[str]:
        """The output records as JSON texts (no newline), built without intermediate dicts.

        Each float32 is written as the shortest text that reads back as the same float32 (numpy's
        float-to-string, vectorised). Non-finite predictions (a model overflowing on extreme inputs)
        are written as null.
        """
        ts = self.ts
        n_ts = len(ts) - ts.count(None)
        tss = () if n_ts == 0 else ["" if t is None else ',"ts":' + repr(t) for t in ts]
        head = '{"stream_id":%s,"step":%d,'
        tail = ',"model":' + _quote(self.model_version).replace("%", "%%") + ("%s}" if n_ts else "}")
        ids = map(_quote, self.stream_ids)
        steps = self.steps.tolist()
        if not self.chunk.any():
            rows = _row_texts(self.predictions)
            fmt = head + '"prediction":[%s]' + tail
            return [fmt % r for r in (zip(ids, steps, rows, tss) if n_ts else zip(ids, steps, rows))]
        same = _same_chunks(self)
        if same is not None:  # the usual poll of chunks: their texts straight from one (records, k, O) array
            texts = _chunk_texts(self.predictions, same)
            if texts is not None:
                fmt = head + '"predictions":[[%s]]' + tail
                return [fmt % r for r in (zip(ids, steps, texts, tss) if n_ts else zip(ids, steps, texts))]
        rows = _row_texts(self.predictions)
        starts = self.start.tolist()
        lengths = self.length.tolist()
        bodies = ['"predictions":[[' + "], [".join(rows[a:a + k]) + "]]" if c else '"prediction":[' + rows[a] + "]"
                  for a, k, c in zip(starts, lengths, self.chunk.tolist())]
        fmt = head + "%s" + tail
        return [fmt % r for r in (zip(ids, steps, bodies, tss) if n_ts else zip(ids, steps, bodies))]

    def split(self, caps: int | np.ndarray) -> "Outputs":
        """The same predictions with every record longer than its cap (steps; one cap, or one per record)
        cut into records of at most that many consecutive steps, each with its own first step."""
        caps = np.broadcast_to(np.maximum(np.asarray(caps, np.int64), 1), self.length.shape)
        pieces = -(-self.length // caps)
        if len(pieces) == 0 or pieces.max() <= 1:
            return self
        rec = np.repeat(np.arange(len(pieces)), pieces)
        j = np.arange(len(rec)) - np.repeat(np.cumsum(pieces) - pieces, pieces)  # piece number in its record
        start = self.start[rec] + j * caps[rec]
        length = np.minimum(caps[rec], self.start[rec] + self.length[rec] - start)
        take = rec.tolist()
        return Outputs(self.model_version, [self.stream_ids[r] for r in take], self.row_steps[start],
                       [self.ts[r] for r in take], self.chunk[rec], start, length, self.predictions, self.row_steps)

    @staticmethod
    def concat(parts: list["Outputs"], empty: "Outputs") -> "Outputs":
        """Several polls' (or events') outputs as one, in order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return empty
        if len(parts) == 1:
            return parts[0]
        rows = np.cumsum([0] + [len(p.predictions) for p in parts])
        return Outputs(parts[0].model_version, [s for p in parts for s in p.stream_ids],
                       np.concatenate([p.steps for p in parts]), [t for p in parts for t in p.ts],
                       np.concatenate([p.chunk for p in parts]),
                       np.concatenate([p.start + off for p, off in zip(parts, rows.tolist())]),
                       np.concatenate([p.length for p in parts]), np.concatenate([p.predictions for p in parts]),
                       np.concatenate([p.row_steps for p in parts]))


# orjson writes a float32 as the same shortest text as numpy's float-to-string for 0 and for magnitudes in
# [1e-4, 1e6); outside it numpy switches to exponent notation earlier (1e-05, 1.7044885e+06) than orjson.
_ORJSON_TEXT_RANGE = (1e-4, 1e6)


def _orjson_writes_numpys_text(preds: np.ndarray) -> bool:
    """Whether orjson writes every value of `preds` as numpy's text (the usual case: NaN and inf are not)."""
    if _orjson is None or preds.dtype != np.float32:
        return False
    a = np.abs(preds)
    low, high = _ORJSON_TEXT_RANGE
    return bool(((a >= low) & (a < high) | (a == 0)).all())


def _same_chunks(out: Outputs) -> int | None:
    """k when every record is a chunk of k >= 1 prediction rows, one after another in record order."""
    n = len(out.stream_ids)
    if n == 0 or not out.chunk.all():
        return None
    k = int(out.length[0])
    if len(out.predictions) != n * k or not (out.length == k).all() or not (out.start == np.arange(0, n * k, k)).all():
        return None
    return k


def _chunk_texts(preds: np.ndarray, k: int) -> list[str] | None:
    """'v1, v2], [v3, v4' (the inside of a record's predictions list) for each record of k rows (numpy's text,
    written by orjson); None where orjson's text would not be numpy's."""
    if preds.shape[1] == 0 or not _orjson_writes_numpys_text(preds):
        return None
    whole = np.ascontiguousarray(preds).reshape(-1, k, preds.shape[1])
    text = _orjson.dumps(whole, option=_orjson.OPT_SERIALIZE_NUMPY)[3:-3].decode("ascii")
    return text.replace(",", ", ").split("]], [[")  # numpy's separator, then the records


def _row_texts(preds: np.ndarray) -> list[str]:
    """'v1, v2, ...' for every row of a float32 matrix."""
    if preds.shape[0] == 0:
        return []
    if preds.shape[1] == 0:
        return [""] * preds.shape[0]
    if _orjson_writes_numpys_text(preds):
        text = _orjson.dumps(np.ascontiguousarray(preds), option=_orjson.OPT_SERIALIZE_NUMPY)[2:-2].decode("ascii")
        if preds.shape[1] == 1:
            return text.split("],[")
        return text.replace(",", ", ").split("], [")  # numpy's separator, then the rows
    text = preds.astype("U16")  # the longest float32 text, "-1.1754944e-38", has 14 characters
    if not np.isfinite(preds.sum(dtype=np.float64)):
        text[~np.isfinite(preds)] = "null"
    if preds.shape[1] == 1:
        return text[:, 0].tolist()
    return list(map(", ".join, text.tolist()))


def _runs(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal values in `a` starts, and its length."""
    n = len(a)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    change = np.empty(n, bool)
    change[0] = True
    np.not_equal(a[1:], a[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    return starts, np.diff(starts, append=n)


@dataclass
class PollResult:
    outputs: Outputs
    dead_letters: list[dict]
    messages: int
    seconds: float
    dead_letter_index: list[int] = field(default_factory=list)  # the message each dead letter is about


@dataclass
class ApplyStats:
    """What one `Engine.apply` call did (the engine's metrics are updated from it)."""

    events: dict[str, int] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    waves: list[int] = field(default_factory=list)
    gaps: int = 0
    resets: int = 0
    started: int = 0
    ended: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    moved: list[tuple[str, int, int]] = field(default_factory=list)  # streams seen on another partition


class Engine:
    """Drives a StepModel for many concurrent streams. One engine per model; not thread-safe."""

    def __init__(self, model, config: EngineConfig | None = None, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time):
        self.model = model
        self.config = config or EngineConfig()
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock = clock
        self.store = StateStore(model.state_size, model_version=model.version,
                                initial_state=model.initial_state(1)[0],
                                capacity=self.config.initial_capacity, max_streams=self.config.max_streams)
        self.metrics.set_model(model)
        self.routing = RoutingChecks(self.metrics, self.config.on_key_mismatch)
        self.prediction_limit = None if self.config.max_output_record_bytes is None else limits.PredictionLimit(
            self.config.max_output_record_bytes, model.output_size, model.version)
        self.step_block = 512  # rows per model.step call within a wave (cache-sized working sets)
        # a token model (input_kind "tokens") takes one integer id per step: the schema checks them
        self._vocab_size = getattr(model, "vocab_size", None)
        self._empty_outputs = self._outputs_of(Events.from_arrays([], np.empty((0, model.feature_size))),
                                               np.empty(0, np.int64), np.empty(0, np.int64),
                                               np.empty((0, model.output_size), np.float32))

    # ------------------------------------------------------------------ polls (raw messages)

    def process(self, poll: Poll) -> PollResult:
        """Decode, check, apply and account one poll of raw messages (see the module docstring)."""
        m = self.metrics
        events, rejected = self._decode(poll)
        outputs, more = self._serve_isolated(poll, events)  # apply counts its own step_gap / stream_limit
        rejected.extend(more)
        for r in rejected:
            if r.code in _OUTCOME_OF:
                m.count_events(_OUTCOME_OF[r.code], 1)
            elif r.code in _SCHEMA_CODES:
                m.count_events("invalid", 1)
        dead = []
        if rejected:
            rejected.sort(key=lambda r: r.index)
            dead = [self._dead_letter(poll, r) for r in rejected]
            m.count_dead_letters(r.code for r in rejected)
        seconds = time.perf_counter() - poll.received
        m.polls.inc()
        m.poll_duration.observe(seconds)
        m.event_latency.observe(seconds, len(poll.messages))
        return PollResult(outputs=outputs, dead_letters=dead, messages=len(poll.messages), seconds=seconds,
                          dead_letter_index=[r.index for r in rejected])

    # ------------------------------------------------------------------ one bad message, one dead letter

    def _decode(self, poll: Poll) -> tuple[Events, list[Rejection]]:
        args = (self.model.feature_size, self.config.max_message_bytes)
        try:
            return schema.decode(poll.messages, *args, poll.partitions, self._vocab_size)
        except Exception as exc:  # noqa: BLE001 - a decoder bug must cost one message, not the poll
            log.warning("decoding a poll of %d messages raised %s: %s; decoding them one by one",
                        len(poll.messages), type(exc).__name__, exc)
        parts, rejected = [], []
        for i, message in enumerate(poll.messages):
            try:
                ev, rej = schema.decode([message], *args, None if poll.partitions is None else poll.partitions[i:i + 1],
                                        self._vocab_size, bulk=False)
            except Exception as exc:  # noqa: BLE001
                rejected.append(self._internal_error(i, exc))
                continue
            ev.index = np.full(len(ev), i, np.int64)
            parts.append(ev)
            rejected.extend(Rejection(i, r.code, r.detail) for r in rej)
        return schema.concat(parts, self.model.feature_size), rejected

    def _serve(self, poll: Poll, ev: Events) -> tuple[Outputs, list[Rejection]]:
        """Key and size checks, `apply`, records split to fit: what `_serve_isolated` retries event by event."""
        rejected: list[Rejection] = []
        if poll.keys is not None:
            ev, more = self.routing.check_keys(ev, poll.keys)
            rejected.extend(more)
        if self.prediction_limit is not None:
            ev, more = self._refuse_too_large(ev)
            rejected.extend(more)
        outputs, more = self.apply(ev)
        rejected.extend(more)
        if self.prediction_limit is not None and len(outputs):
            outputs = self._split(outputs)
        return outputs, rejected

    def _serve_isolated(self, poll: Poll, ev: Events) -> tuple[Outputs, list[Rejection]]:
        """`_serve` under a savepoint; if it raises, roll back and serve the events one by one."""
        store = self.store
        sp = store.savepoint(ev.stream_ids)
        try:
            result = self._serve(poll, ev)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            store.rollback(sp)
            log.warning("applying a poll of %d events raised %s: %s; state rolled back, applying them one by one",
                        len(ev), type(exc).__name__, exc)
        else:
            store.release_savepoint()
            return result
        parts, rejections = [], []
        for e in range(len(ev)):
            one = schema.select(ev, np.arange(len(ev)) == e)
            sp = store.savepoint(one.stream_ids)
            try:
                out, more = self._serve(poll, one)
            except Exception as exc:  # noqa: BLE001
                store.rollback(sp)
                rejections.append(self._internal_error(int(one.index[0]), exc))
                continue
            store.release_savepoint()
            parts.append(out)
            rejections.extend(more)
        return Outputs.concat(parts, self._empty_outputs), rejections

    def _internal_error(self, index: int, exc: BaseException) -> Rejection:
        log.error("message %d of its poll raised %s: %s; it becomes an internal_error dead letter", index,
                  type(exc).__name__, exc, exc_info=exc)
        return Rejection(index, schema.INTERNAL_ERROR, f"handling this message raised {type(exc).__name__}: {exc}")

    def _refuse_too_large(self, ev: Events) -> tuple[Events, list[Rejection]]:
        """Events whose one-step prediction record could not fit the output topic: refused, state untouched."""
        limit = self.prediction_limit
        if not len(ev) or limit.uniform_cap() >= 1:
            return ev, []
        caps = limit.caps(ev.stream_ids)
        bad = caps < 1
        if not bad.any():
            return ev, []
        rejections = [Rejection(int(ev.index[e]), schema.OUTPUT_TOO_LARGE,
                                f"a prediction record for stream {ev.stream_ids[e][:80]!r} would exceed the output "
                                f"topic's limit of {limit.record_bytes} bytes even for one step; raise the output "
                                "topic's max.message.bytes or use shorter stream ids")
                      for e in np.flatnonzero(bad).tolist()]
        return schema.select(ev, ~bad), rejections

    def _split(self, outputs: Outputs) -> Outputs:
        limit = self.prediction_limit
        cap = limit.uniform_cap()
        if cap >= 1:
            return outputs if outputs.length.max() <= cap else outputs.split(cap)
        return outputs.split(limit.caps(outputs.stream_ids))

    def _dead_letter(self, poll: Poll, r: Rejection) -> dict:
        """The dead letter of rejection `r`, cut to fit the dead-letter topic (never raises)."""
        limit = self.config.max_dead_letter_record_bytes
        try:
            key = None if poll.keys is None else limits.dead_letter_key(poll.keys[r.index])
            budget = None if limit is None else limits.value_budget(limit, key)
            return limits.fit_dead_letter(r.code, r.detail, poll.source(r.index), poll.messages[r.index], budget)
        except Exception as exc:  # noqa: BLE001 - a dead letter without its payload rather than none
            log.error("building the dead letter of message %d raised %s: %s", r.index, type(exc).__name__, exc,
                      exc_info=exc)
            return schema.dead_letter(r.code, r.detail, None, b"", keep=0)

    # ------------------------------------------------------------------ decoded events

    def apply(self, ev: Events, now: float | None = None) -> tuple[Outputs, list[Rejection]]:
        """Apply decoded events (in order); returns their outputs and the engine's own rejections."""
        now = self.clock() if now is None else now
        store = self.store
        stats = ApplyStats()
        stats.expired = store.expire(now, self.config.ttl)
        rejections: list[Rejection] = []
        if len(ev):
            slots, stats.started, stats.evicted = store.acquire(ev.stream_ids, now, ev.partitions, stats.moved)
            if slots.min() < 0:
                refused = slots < 0
                rejections.extend(Rejection(int(ev.index[e]), schema.STREAM_LIMIT,
                                            f"stream {ev.stream_ids[e]!r} refused: this poll names more new "
                                            f"streams than --max-streams={self.config.max_streams} leaves room for")
                                  for e in np.flatnonzero(refused))
                stats.events["refused"] = int(refused.sum())
                ev = schema.select(ev, ~refused)
                slots = slots[~refused]
        if len(ev):
            outputs = self._apply_waves(ev, slots, stats, rejections)
        else:
            outputs = self._empty_outputs
        if len(ev) and ev.ts.count(None) < len(ev.ts):
            self._observe_lag(ev, now)
        self._account(stats)
        return outputs, rejections

    def _apply_waves(self, ev: Events, slots: np.ndarray, stats: ApplyStats,
                     rejections: list[Rejection]) -> Outputs:
        store, model = self.store, self.model
        row_event, row_slot, given, row_first, row_last = _expand_rows(ev, slots)
        n_rows = len(row_event)
        one_wave = n_rows == 1 or np.bincount(row_slot).max() == 1  # every row another stream's
        if not one_wave and not ev.reset.any() and not ev.end.any():
            outputs = self._apply_sequences(ev, row_event if row_first is not None else None, row_slot, given, stats)
            if outputs is not None:
                return outputs
        row_reset = None
        if ev.reset.any():
            row_reset = ev.reset[row_event] if row_first is None else ev.reset[row_event] & row_first
        row_end = None
        if ev.end.any():
            row_end = ev.end[row_event] if row_last is None else ev.end[row_event] & row_last
            ending = np.zeros(store.capacity, bool)

        waves = [np.arange(n_rows)] if one_wave else self._waves(row_slot)
        status = np.zeros(n_rows, np.int8)
        out_step = np.empty(n_rows, np.int64)
        y_all = np.empty((n_rows, model.output_size), np.float32)
        x_all = ev.features
        policy = self.config.on_gap
        gap_info: dict[int, tuple[int, int]] = {}
        for rows in waves:
            whole = len(rows) == n_rows  # the only wave, every row in input order: no gathers needed
            s = row_slot if whole else row_slot[rows]
            if row_reset is not None:
                rr = row_reset[rows]
                if rr.any():
                    g = given[rows][rr]
                    store.restart(s[rr], np.where(g >= 0, g - 1, -1))
                    stats.resets += int(rr.sum())
            last = store.last_step[s]
            g = given if whole else given[rows]
            step = np.where(g >= 0, g, last + 1)
            delta = step - last
            if not (delta == 1).all():
                dup = delta <= 0
                gap = delta > 1
                n_gap = int(gap.sum())
                go = ~dup
                if n_gap:
                    stats.gaps += n_gap
                    if policy == "reject":
                        status[rows[gap]] = _REJECTED
                        go &= ~gap
                        for r, st, la in zip(rows[gap].tolist(), step[gap].tolist(), last[gap].tolist()):
                            gap_info.setdefault(int(row_event[r]), (st, la))
                    elif policy == "reset":
                        store.restart(s[gap], step[gap] - 1)
                status[rows[dup]] = _DUPLICATE
                rows, s, step = rows[go], s[go], step[go]
                whole = False
                if len(rows) == 0:
                    continue
            x = x_all if whole else x_all[rows]
            if len(s) <= self.step_block:
                y, new_state = model.step(x, store.state[s])
                store.write(s, new_state, step)
            else:  # gather -> step -> scatter block by block: each block's rows stay in cache
                y = np.empty((len(s), model.output_size), np.float32)
                for lo in range(0, len(s), self.step_block):
                    b = slice(lo, lo + self.step_block)
                    y[b], new_state = model.step(x[b], store.state[s[b]])
                    store.write(s[b], new_state, step[b])
            if whole:
                y_all, out_step = y, step
            else:
                y_all[rows] = y
                out_step[rows] = step
            stats.waves.append(len(rows))
            if row_end is not None:
                ending[s] = False  # a stream that goes on after an end in this poll is a new stream
                e = row_end[rows]
                if e.any():
                    ending[s[e]] = True
                    store.restart(s[e], -1)
        if row_end is not None:
            stats.ended = store.free(np.flatnonzero(ending))

        return self._tally_waves(ev, row_event, status, out_step, y_all, gap_info, stats, rejections)

    def _tally_waves(self, ev: Events, row_event: np.ndarray, status: np.ndarray, out_step: np.ndarray,
                     y_all: np.ndarray, gap_info: dict[int, tuple[int, int]], stats: ApplyStats,
                     rejections: list[Rejection]) -> Outputs:
        """Counts applied, duplicate and rejected steps and events; outputs for the applied rows."""
        n_events, n_rows = len(ev), len(row_event)
        if status.any():
            applied = np.flatnonzero(status == _APPLIED)
            n_dup = int((status == _DUPLICATE).sum())
            n_rej = int((status == _REJECTED).sum())
            stats.steps = {"applied": len(applied), "duplicate": n_dup, "rejected": n_rej}
            ev_applied = np.bincount(row_event[applied], minlength=n_events) > 0
            ev_rejected = np.zeros(n_events, bool)
            if n_rej:
                ev_rejected[row_event[status == _REJECTED]] = True
                ev_rejected &= ~ev_applied
                for e in np.flatnonzero(ev_rejected).tolist():
                    st, la = gap_info[e]
                    rejections.append(Rejection(int(ev.index[e]), schema.STEP_GAP,
                                                f"stream {ev.stream_ids[e]!r}: step {st} skips ahead of the next "
                                                f"step {la + 1} (--on-gap reject)"))
            stats.events = {**stats.events, "applied": int(ev_applied.sum()), "rejected": int(ev_rejected.sum()),
                            "duplicate": int(n_events - ev_applied.sum() - ev_rejected.sum())}
            return self._outputs_of(ev, row_event[applied], out_step[applied], y_all[applied])
        stats.steps = {"applied": n_rows}
        stats.events = {**stats.events, "applied": n_events}
        if n_rows == n_events:
            return self._outputs_of(ev, None, out_step, y_all)
        return self._outputs_of(ev, row_event, out_step, y_all)

    def _apply_sequences(self, ev: Events, row_event: np.ndarray | None, row_slot: np.ndarray, given: np.ndarray,
                         stats: ApplyStats) -> Outputs | None:
        """The usual poll with several rows of some stream (a Kafka poll holds runs of one partition's events,
        each stream's several times; chunks): when every row goes on from its stream's previous one (no
        duplicate, gap, reset or end), each stream's rows are one sequence and `model.run_ragged` steps them
        all, the state staying in the model's layout from step to step instead of a gather and a scatter per
        wave. The same waves, the same arithmetic. None: the general path (`_apply_waves`) decides."""
        run = getattr(self.model, "run_ragged", None)
        n = len(row_slot)
        if run is None:
            return None
        order = np.argsort(row_slot, kind="stable")  # rows grouped by stream, in input order within each
        sorted_slots = row_slot[order]
        group_start, sizes = _runs(sorted_slots)  # each stream's first row (in `order`) and rows
        rank = np.arange(n) - np.repeat(group_start, sizes)  # the row's place in its stream (its wave)
        streams = sorted_slots[group_start]
        store = self.store
        last = store.last_step[streams]
        expected = np.repeat(last + 1, sizes) + rank
        g = given[order]
        if not ((g < 0) | (g == expected)).all():
            return None
        by_length = np.argsort(-sizes, kind="stable")
        column = np.empty(len(sizes), np.int64)
        column[by_length] = np.arange(len(sizes))
        row_column = np.repeat(column, sizes)
        model = self.model
        xs = np.zeros((len(sizes), int(sizes.max()), model.feature_size), np.float32)
        xs[row_column, rank] = ev.features[order]
        ordered = streams[by_length]
        ys, final = run(xs, sizes[by_length], store.state[ordered])
        store.write(ordered, final, (last + sizes)[by_length])
        y_all = np.empty((n, model.output_size), np.float32)
        y_all[order] = ys[row_column, rank]
        out_step = np.empty(n, np.int64)
        out_step[order] = expected
        stats.waves.extend(np.bincount(rank).tolist())
        stats.steps = {"applied": n}
        stats.events = {**stats.events, "applied": len(ev)}
        return self._outputs_of(ev, row_event, out_step, y_all)

    @staticmethod
    def _waves(row_slot: np.ndarray) -> list[np.ndarray]:
        """Row indices per wave: wave w holds each stream's w-th row, in input order."""
        n = len(row_slot)
        order = np.argsort(row_slot, kind="stable")
        group_start, sizes = _runs(row_slot[order])
        rank_sorted = np.arange(n) - np.repeat(group_start, sizes)
        rank = np.empty(n, np.int64)
        rank[order] = rank_sorted
        by_wave = np.argsort(rank, kind="stable")
        bounds = np.cumsum(np.bincount(rank))
        return np.split(by_wave, bounds[:-1])

    def _outputs_of(self, ev: Events, row_event: np.ndarray | None, row_steps: np.ndarray,
                    preds: np.ndarray) -> Outputs:
        """Group applied rows (in input order) into one record per event."""
        n = len(row_steps)
        if row_event is None:  # one applied row per event, all events
            return Outputs(self.model.version, ev.stream_ids, row_steps, ev.ts, ev.chunk,
                           np.arange(n), np.ones(n, np.int64), preds, row_steps)
        first, length = _runs(row_event)
        rec_event = row_event[first]
        ids = ev.stream_ids
        ts = ev.ts
        return Outputs(self.model.version, [ids[e] for e in rec_event.tolist()], row_steps[first],
                       [ts[e] for e in rec_event.tolist()], ev.chunk[rec_event], first, length, preds, row_steps)

    def _observe_lag(self, ev: Events, now: float) -> None:
        ts = np.array([t for t in ev.ts if t is not None], dtype=np.float64)
        self.metrics.event_lag.observe_many(now - ts / 1000.0)

    def _account(self, stats: ApplyStats) -> None:
        m = self.metrics
        for outcome, n in stats.events.items():
            m.count_events(outcome, n)
        for outcome, n in stats.steps.items():
            m.count_steps(outcome, n)
        applied = stats.steps.get("applied", 0)
        if applied:
            m.predictions.inc(applied)
        for n in stats.waves:
            m.wave_size.observe(n)
        if stats.gaps:
            m.gaps.inc(stats.gaps)
        if stats.resets:
            m.resets.inc(stats.resets)
        if stats.started:
            m.streams_started.inc(stats.started)
        self.routing.split_streams(stats.moved)
        m.count_freed("end", len(stats.ended))
        m.count_freed("expired", len(stats.expired))
        m.count_freed("evicted", len(stats.evicted))
        m.active_streams.set(len(self.store))
        m.state_capacity.set(self.store.capacity)

    # ------------------------------------------------------------------ partitions and checkpoints (Kafka)

    def restore(self, record) -> None:
        """Load a checkpointed `StreamRecord` (StateMismatch if it belongs to another model)."""
        self.store.restore(record)
        self.metrics.active_streams.set(len(self.store))
        self.metrics.state_capacity.set(self.store.capacity)

    def drop_partition(self, partition: int) -> list[str]:
        dropped = self.store.drop_partition(partition)
        self.metrics.count_freed("dropped", len(dropped))
        self.metrics.active_streams.set(len(self.store))
        return dropped


def run(engine: Engine, polls, sink, on_result: Callable[[PollResult], None] | None = None) -> dict:
    """Feed every poll through the engine into the sink; returns totals."""
    totals = {"polls": 0, "messages": 0, "records": 0, "predictions": 0, "dead_letters": 0}
    for poll in polls:
        result = engine.process(poll)
        sink.write(result)
        totals["polls"] += 1
        totals["messages"] += result.messages
        totals["records"] += len(result.outputs)
        totals["predictions"] += len(result.outputs.predictions)
        totals["dead_letters"] += len(result.dead_letters)
        if on_result is not None:
            on_result(result)
    return totals


def _expand_rows(ev: Events, slots: np.ndarray):
    """One row per step of a poll: (row_event, row_slot, given step or -1, first row of its event, last row).

    Without chunks every event is one row and the first/last masks are None."""
    counts = ev.counts
    n_events = len(ev)
    n_rows = int(counts.sum())
    if n_rows == n_events:
        return np.arange(n_events), slots, ev.steps, None, None
    row_event = np.repeat(np.arange(n_events), counts)
    starts = np.cumsum(counts) - counts
    row_off = np.arange(n_rows) - starts[row_event]
    given = ev.steps[row_event]
    given = np.where(given >= 0, given + row_off, -1)
    return row_event, slots[row_event], given, row_off == 0, row_off == counts[row_event] - 1

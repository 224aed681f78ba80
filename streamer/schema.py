"""The event schema: what comes in, what goes out, and what a dead letter looks like.

Input (one JSON object in UTF-8 per Kafka message or JSONL line)::

    {"stream_id": "s-17", "step": 42, "features": [0.1, 0.2, 0.3, 0.4, 0.5], "ts": 1718000000000}
    {"stream_id": "s-17", "step": 43, "features": [[...], [...], [...]]}      # a chunk of 3 steps
    {"stream_id": "s-17", "features": [...], "end": true}                     # no step: appended

- ``stream_id`` (required): a non-empty string of at most 256 characters, all of them Unicode scalar values
  (a lone surrogate such as ``"\\ud800"`` is valid JSON but cannot be written as UTF-8, so it is refused:
  the id is the output's and the changelog's record key).
- ``features`` (required): a list of exactly F numbers (F = the model's feature size), or a non-empty
  list of such lists (a chunk of consecutive steps). Numbers are JSON integers or floats; booleans,
  strings, NaN and +-Infinity (and numbers too large for float32) are refused.
  For a token model (one that starts with an Embedding, `decode(..., vocab_size=V)`): one token id per
  step, ``"features": 17``, or a non-empty list of ids for a chunk, ``"features": [17, 4, 9]``. An id is
  a JSON integer from 0 to V-1 (like ``step``: not 17.0, not a boolean); anything else, negative ids and
  ids >= V included, is ``invalid_features``. Ids reach the model as float32 (exact: V <= 2**24).
- ``step`` (optional, recommended): an integer 0 <= step <= 2**53-1 (a JSON integer, not 3.0).
  A chunk with ``step`` s covers steps s..s+k-1.
- ``reset`` / ``end`` (optional): JSON booleans.
- ``ts`` (optional): event time, epoch milliseconds, a number from 0 to 2**53; passed through to the output.
- ``null`` counts as absent for the optional fields; unknown fields are ignored.

Every message that breaks a rule becomes exactly one dead letter (`dead_letter`), with the first
failing check (in the order of `ERROR_CODES`) as its code.

Output, one record per input event that applied at least one step::

    {"stream_id": "s-17", "step": 42, "prediction": [0.93, 0.07], "model": "3f2a...", "ts": 1718000000000}
    {"stream_id": "s-17", "step": 43, "predictions": [[...], [...], [...]], "model": "3f2a..."}

A chunk gives one record whose ``step`` is its first *applied* step. Each float32 prediction is
written as the shortest text that reads back as the same float32 (``0.1``, not ``0.10000000149011612``),
so parsing it as float32 gives the served value bit for bit; a non-finite one is written as ``null``.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from itertools import chain, repeat
from json.scanner import make_scanner
from operator import itemgetter
from typing import Any, Sequence

import numpy as np

from streamer.config import DEFAULT_MAX_MESSAGE_BYTES

MAX_STREAM_ID_CHARS = 256
MAX_STEP = 2**53 - 1
MAX_TS = 2**53  # epoch milliseconds; far beyond any real date, and exact in float64
DEAD_LETTER_PAYLOAD_LIMIT = 4096  # bytes of an oversized message kept in its dead letter

# Stable error codes (dead letter "error" field and the `reason` label of streamer_dead_letters_total).
# Schema checks, in the order they are applied:
MESSAGE_TOO_LARGE = "message_too_large"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_STREAM_ID = "missing_stream_id"
INVALID_STREAM_ID = "invalid_stream_id"
MISSING_FEATURES = "missing_features"
INVALID_FEATURES = "invalid_features"
RAGGED_CHUNK = "ragged_chunk"
WRONG_FEATURE_COUNT = "wrong_feature_count"
INVALID_STEP = "invalid_step"
INVALID_RESET = "invalid_reset"
INVALID_END = "invalid_end"
INVALID_TS = "invalid_ts"
NON_FINITE_FEATURES = "non_finite_features"
# Engine decisions:
STEP_GAP = "step_gap"  # a gap under --on-gap reject
STREAM_LIMIT = "stream_limit"  # one poll names more new streams than --max-streams allows
KEY_MISMATCH = "key_mismatch"  # the message key is missing or is not the stream_id (--on-key-mismatch reject)
OUTPUT_TOO_LARGE = "output_too_large"  # even one step's prediction record would exceed the output topic's limit
INTERNAL_ERROR = "internal_error"  # handling this message raised an unexpected exception (a bug; logged)

SCHEMA_ERROR_CODES = (
    MESSAGE_TOO_LARGE, INVALID_UTF8, INVALID_JSON, NOT_AN_OBJECT, MISSING_STREAM_ID, INVALID_STREAM_ID,
    MISSING_FEATURES, INVALID_FEATURES, RAGGED_CHUNK, WRONG_FEATURE_COUNT, INVALID_STEP, INVALID_RESET,
    INVALID_END, INVALID_TS, NON_FINITE_FEATURES,
)
ERROR_CODES = SCHEMA_ERROR_CODES + (STEP_GAP, STREAM_LIMIT, KEY_MISMATCH, OUTPUT_TOO_LARGE, INTERNAL_ERROR)
DETAIL_CHARS = 1000  # a dead letter's detail is cut to this many characters

_NUMBER_TYPES = frozenset((int, float))
_scan_json = make_scanner(json.JSONDecoder())  # the C scanner behind json.loads, without its wrappers
try:  # a C JSON parser for the common case; anything it refuses goes through the json module (same results)
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson is a dependency; the json module alone gives the same events
    _orjson_loads = None
_TS_TYPES = (int, float)


class EventError(ValueError):
    """One message breaks the schema: `code` is a stable snake_case code, the message the detail."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass
class Events:
    """The valid events of one poll, column by column (the engine's input).

    Event ``e`` covers rows ``offsets[e] : offsets[e] + counts[e]`` of `features`.
    """

    stream_ids: list[str]
    steps: np.ndarray  # (E,) int64, -1 where absent
    counts: np.ndarray  # (E,) int64 >= 1, steps in the event
    chunk: np.ndarray  # (E,) bool: features was a list of lists (output uses "predictions")
    reset: np.ndarray  # (E,) bool
    end: np.ndarray  # (E,) bool
    ts: list  # (E,) the original ts values (int/float) or None
    features: np.ndarray  # (R, F) float32, R = counts.sum(); a token model's ids as (R, 1) float32
    index: np.ndarray  # (E,) int64: the message's position in its poll
    partitions: np.ndarray | None = None  # (E,) int64 source partition, or None

    def __len__(self) -> int:
        return len(self.stream_ids)

    @classmethod
    def from_arrays(cls, stream_ids: Sequence[str], features: np.ndarray, steps=None, *, reset=None,
                    end=None, ts=None, partitions=None) -> "Events":
        """Single-step events built in-process (trusted input: no validation). `features` is (E, F)."""
        n = len(stream_ids)
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != n:
            raise ValueError(f"features must be (E, F) with E={n}, got {x.shape}")
        flags = np.zeros(n, dtype=bool)
        return cls(
            stream_ids=list(stream_ids),
            steps=np.full(n, -1, np.int64) if steps is None else np.asarray(steps, np.int64),
            counts=np.ones(n, np.int64),
            chunk=flags,
            reset=flags if reset is None else np.asarray(reset, bool),
            end=flags if end is None else np.asarray(end, bool),
            ts=[None] * n if ts is None else list(ts),
            features=x,
            index=np.arange(n, dtype=np.int64),
            partitions=None if partitions is None else np.asarray(partitions, np.int64),
        )


@dataclass(frozen=True)
class Rejection:
    """A message refused by the schema or the engine: its position in the poll, code and detail."""

    index: int
    code: str
    detail: str


# --------------------------------------------------------------------------- decoding


def _check_features(feats: Any, feature_size: int) -> tuple[bool, int]:
    """(is_chunk, number of steps); raises EventError. Finiteness is checked later, vectorised."""
    if feats is None:
        raise EventError(MISSING_FEATURES, "'features' is missing")
    if type(feats) is not list or not feats:
        raise EventError(INVALID_FEATURES, "'features' must be a non-empty list of numbers or of lists of numbers")
    if type(feats[0]) is list:
        width = len(feats[0])
        if set(map(type, feats)) == _LIST_TYPE and set(map(len, feats)) == {width} and width == feature_size \
                and set(map(type, chain.from_iterable(feats))) <= _NUMBER_TYPES:
            return True, len(feats)  # the usual chunk, checked in C; else row by row, for the first error
        for row in feats:
            if type(row) is not list:
                raise EventError(INVALID_FEATURES, "a chunk's 'features' must be a list of lists of numbers")
            if len(row) != width:
                raise EventError(RAGGED_CHUNK, f"chunk rows have different lengths ({width} and {len(row)})")
        if width != feature_size:
            raise EventError(WRONG_FEATURE_COUNT, f"each chunk row needs {feature_size} features, got {width}")
        if not set(map(type, chain.from_iterable(feats))) <= _NUMBER_TYPES:
            raise EventError(INVALID_FEATURES, "features must be numbers (not booleans, strings, lists or null)")
        return True, len(feats)
    if len(feats) != feature_size:
        raise EventError(WRONG_FEATURE_COUNT, f"'features' needs {feature_size} numbers, got {len(feats)}")
    if not set(map(type, feats)) <= _NUMBER_TYPES:
        raise EventError(INVALID_FEATURES, "features must be numbers (not booleans, strings, lists or null)")
    return False, 1


def _check_tokens(feats: Any, vocab_size: int) -> tuple[bool, int]:
    """(is_chunk, number of steps) of a token model's features; raises EventError."""
    if feats is None:
        raise EventError(MISSING_FEATURES, "'features' is missing")
    if type(feats) is int:
        ids, is_chunk = (feats,), False
    elif type(feats) is list and feats:
        ids, is_chunk = feats, True
    else:
        raise EventError(INVALID_FEATURES, "'features' must be a token id (an integer) or a non-empty list of "
                                           f"token ids, got {_short(feats)}")
    if not set(map(type, ids)) <= {int} or min(ids) < 0 or max(ids) >= vocab_size:
        bad = next(v for v in ids if type(v) is not int or not 0 <= v < vocab_size)
        raise EventError(INVALID_FEATURES, f"token ids must be integers from 0 to {vocab_size - 1} "
                                           f"(the model's vocabulary), got {_short(bad)}")
    return is_chunk, len(ids)


def _check_flag(obj: dict, name: str, code: str) -> bool:
    value = obj.get(name)
    if value is None or value is False:
        return False
    if value is True:
        return True
    raise EventError(code, f"'{name}' must be true or false, got {_short(value)}")


def _short(value: Any, limit: int = 40) -> str:
    """A short JSON-ish rendering of a bad value for a detail text (never raises)."""
    if type(value) is str and len(value) > limit:
        value = value[:limit]  # no need to encode a huge string to show 40 characters
    try:
        text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    except (ValueError, TypeError, RecursionError):  # deeply nested, a huge integer...
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_scalar_text(text: str) -> bool:
    """Whether every character is a Unicode scalar value (no lone surrogate): encodable as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode(messages: Sequence[bytes | str], feature_size: int,
           max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
           partitions: Sequence[int] | np.ndarray | None = None,
           vocab_size: int | None = None, *, bulk: bool = True) -> tuple[Events, list[Rejection]]:
    """Parse and validate a poll of raw messages into `Events` plus one `Rejection` per bad message.

    `vocab_size` given: the model takes token ids (feature_size 1); see the module docstring.

    This is the hot path. Every message is parsed once; then the usual shape (one step of F numbers,
    the optional fields plain) is validated for the whole poll at once, field by field over columns
    (`_decode_bulk`). A message that fails any of those checks -- or is not bytes, not UTF-8, not one
    JSON object, a chunk... -- goes through the careful per-message checks (`_decode_one`), which give
    its dead letter's code and detail. One numpy conversion and one finiteness check cover the poll.
    `bulk=False` checks every message the careful way (the engine's fallback after an unexpected error).
    """
    if vocab_size is not None and feature_size != 1:
        raise ValueError(f"a token model has feature size 1, got {feature_size}")
    if bulk:
        bulk, careful, parsed = _decode_bulk(messages, feature_size, max_message_bytes, vocab_size)
    else:
        bulk, careful, parsed = None, range(len(messages)), {}
    rejected: list[Rejection] = []
    meta: list[tuple] = []  # (stream_id, step, count, chunk, reset, end, ts, index) per valid event
    rows: list = []
    for i in careful:
        try:
            sid, step, k, is_chunk, reset, end, ts, feats = _decode_one(messages[i], feature_size, max_message_bytes,
                                                                        parsed.get(i), vocab_size)
        except EventError as exc:
            rejected.append(Rejection(i, exc.code, exc.detail))
            continue
        meta.append((sid, step, k, is_chunk, reset, end, ts, i))
        if is_chunk:
            rows.extend(feats)
        else:
            rows.append(feats)
    if bulk is None or meta:
        sids, steps, counts, chunks, resets, ends, tss, index = zip(*meta) if meta else ((),) * 8
        events = Events(
            stream_ids=list(sids),
            steps=np.array(steps, dtype=np.int64),
            counts=np.array(counts, dtype=np.int64),
            chunk=np.array(chunks, dtype=bool),
            reset=np.array(resets, dtype=bool),
            end=np.array(ends, dtype=bool),
            ts=list(tss),
            features=_rows_to_float32(rows, feature_size) if vocab_size is None else _ids_to_float32(rows),
            index=np.array(index, dtype=np.int64),
        )
        if bulk is not None:
            events = _merge(bulk, events)
    else:
        events = bulk
    bad = _non_finite_events(events)
    if bad is not None:
        for e in np.flatnonzero(bad):
            rejected.append(Rejection(int(events.index[e]), NON_FINITE_FEATURES,
                                      "features must be finite float32 numbers (no NaN, Infinity or overflow)"))
        events = select(events, ~bad)
    rejected.sort(key=lambda r: r.index)
    if partitions is not None:
        events.partitions = np.asarray(partitions, dtype=np.int64)[events.index]
    return events, rejected


def _decode_one(raw: Any, feature_size: int, max_message_bytes: int, parsed: dict | None = None,
                vocab_size: int | None = None) -> tuple:
    """The careful checks of one message, in the order of `SCHEMA_ERROR_CODES` (finiteness aside):
    (stream_id, step, count, is_chunk, reset, end, ts, features) or EventError.

    `parsed`: the object the bulk path's parser (orjson) made of these bytes already; used as is unless
    a top-level value is a float beyond 64-bit integers (orjson's reading of a huge integer, which the
    json module reads as an int: then the json module parses it again, for the same dead letter)."""
    if type(raw) is not bytes and type(raw) is not str:
        raw = _as_bytes(raw)
    size = len(raw) if type(raw) is bytes else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_message_bytes:
        raise EventError(MESSAGE_TOO_LARGE, f"message exceeds the limit of {max_message_bytes} bytes "
                                            "(--max-message-bytes)")
    if parsed is not None and (float not in set(map(type, parsed.values())) or
                               all(-2.0**63 <= v < 2.0**64 for v in parsed.values() if type(v) is float)):
        obj = parsed
    else:
        try:
            obj = _loads(raw.decode("utf-8") if type(raw) is bytes else raw)
        except UnicodeDecodeError as exc:
            raise EventError(INVALID_UTF8, f"message is not valid UTF-8 ({exc.reason} at byte {exc.start})")
        except (ValueError, RecursionError) as exc:
            raise EventError(INVALID_JSON, f"message is not valid JSON ({str(exc)[:120]})")
    if type(obj) is not dict:
        raise EventError(NOT_AN_OBJECT, f"message must be a JSON object, got {type(obj).__name__}")
    sid = obj.get("stream_id")
    if type(sid) is not str or not 0 < len(sid) <= MAX_STREAM_ID_CHARS:
        if sid is None:
            raise EventError(MISSING_STREAM_ID, "'stream_id' is missing")
        raise EventError(INVALID_STREAM_ID, f"'stream_id' must be a non-empty string of at most "
                                            f"{MAX_STREAM_ID_CHARS} characters, got {_short(sid)}")
    if not sid.isascii() and not _is_scalar_text(sid):
        raise EventError(INVALID_STREAM_ID, f"'stream_id' must be valid Unicode text (no lone surrogates: it "
                                            f"becomes the UTF-8 record key), got {_short(sid)}")
    feats = obj.get("features")
    if vocab_size is not None:
        is_chunk, k = _check_tokens(feats, vocab_size)
    # the common case inline: one step of F plain numbers
    elif type(feats) is list and len(feats) == feature_size and set(map(type, feats)) <= _NUMBER_TYPES:
        is_chunk, k = False, 1
    else:
        is_chunk, k = _check_features(feats, feature_size)
    step = obj.get("step")
    if step is None:
        step = -1
    elif type(step) is not int or not 0 <= step <= MAX_STEP - k + 1:
        raise EventError(INVALID_STEP, f"'step' must be an integer from 0 to {MAX_STEP}, got {_short(step)}")
    reset = _check_flag(obj, "reset", INVALID_RESET) if "reset" in obj else False
    end = _check_flag(obj, "end", INVALID_END) if "end" in obj else False
    ts = obj.get("ts")
    if ts is not None and (type(ts) not in _TS_TYPES or not 0 <= ts <= MAX_TS):
        raise EventError(INVALID_TS, f"'ts' must be epoch milliseconds, a number from 0 to {MAX_TS}, "
                                     f"got {_short(ts)}")
    return sid, step, k, is_chunk, reset, end, ts, feats


_BAD = object()  # a message the bulk path leaves to `_decode_one`
_LIST_TYPE = {list}
_BULK_MIN = 12  # polls with fewer messages skip the bulk path (its fixed cost is ~10 us)
_NONE = type(None)
_STEP_TYPES = frozenset((int, _NONE))
_FLAG_TYPES = frozenset((bool, _NONE))
_TS_OR_NONE = frozenset((int, float, _NONE))


def _decode_bulk(messages: Sequence, feature_size: int, max_message_bytes: int,
                 vocab_size: int | None = None) -> tuple[Events | None, list[int], dict[int, dict]]:
    """The well-formed single-step messages of a poll, validated column by column: (their `Events`
    (finiteness not yet checked), the indices of every other message, for `_decode_one`, and the JSON
    objects parsed of those already (chunks, for one), so that `_decode_one` need not parse them again).

    Accepts a message only if `_decode_one` would accept it with the same values; anything unusual
    is simply left to it. (None, all indices) when the poll does not suit the bulk path at all.
    """
    n = len(messages)
    if n < _BULK_MIN or feature_size < 1:  # a few messages: the per-message path is quicker
        return None, list(range(n)), {}
    cand = _Candidates()
    drop = cand.drop
    objs = cand.parse(messages, max_message_bytes)
    if not objs:
        return None, sorted(cand.careful), cand.parsed
    get = dict.get
    # ---- stream_id: a str of 1..MAX_STREAM_ID_CHARS characters
    sids = list(map(get, objs, repeat("stream_id")))
    if set(map(type, sids)) != {str} or min(map(len, sids)) < 1 or max(map(len, sids)) > MAX_STREAM_ID_CHARS:
        keep = [type(s) is str and 0 < len(s) <= MAX_STREAM_ID_CHARS for s in sids]
        objs, sids = drop(keep, objs, sids)
    joined = "".join(sids)
    if not joined.isascii() and not _is_scalar_text(joined):  # a lone surrogate somewhere (json module's parse)
        keep = list(map(_is_scalar_text, sids))
        objs, sids = drop(keep, objs, sids)
    # ---- features: a list of exactly F numbers (int or float, not bool); in a poll of chunks (its first
    # message is one), a non-empty list of such lists
    feats = list(map(get, objs, repeat("features")))
    if vocab_size is not None:  # token models: one id per message here (chunks of ids go to `_decode_one`)
        chunked = False
        keep = _tokens_keep(feats, vocab_size)
    else:
        chunked = bool(feats) and type(feats[0]) is list and len(feats[0]) > 0 and type(feats[0][0]) is list
        keep, cand.numbers = _features_keep(feats, feature_size, chunked)
    if keep is not None:
        objs, sids, feats = drop(keep, objs, sids, feats)
    # keys beyond stream_id and features (an upper bound once messages are dropped): when none are
    # left, the remaining optional fields are absent everywhere and their columns need no look-ups
    extra = sum(map(len, objs)) - 2 * len(objs)

    def column(name: str) -> list:
        nonlocal extra
        if extra <= 0:
            return [None] * len(objs)
        vals = list(map(get, objs, repeat(name)))
        extra -= len(vals) - vals.count(None)
        return vals

    # ---- step: absent/null, or an int 0..MAX_STEP (a chunk of k steps: 0..MAX_STEP-k+1)
    steps = column("step")
    if steps.count(None) != len(steps):
        present = [s for s in steps if s is not None]
        longest = max(map(len, feats)) if chunked else 1
        if not set(map(type, steps)) <= _STEP_TYPES or min(present) < 0 or max(present) > MAX_STEP - longest + 1:
            keep = [s is None or (type(s) is int and 0 <= s <= MAX_STEP - (len(f) if chunked else 1) + 1)
                    for s, f in zip(steps, feats)]
            objs, sids, feats, steps = drop(keep, objs, sids, feats, steps)
    # ---- ts: absent/null or a number 0..MAX_TS
    ts = column("ts")
    if ts.count(None) != len(ts) and not _ts_column_ok(ts):
        keep = [t is None or (type(t) in _TS_TYPES and 0 <= t <= MAX_TS) for t in ts]
        objs, sids, feats, steps, ts = drop(keep, objs, sids, feats, steps, ts)
    # ---- reset / end: absent/null or a JSON boolean
    flags = []
    for name in ("reset", "end"):
        vals = column(name)
        if vals.count(None) != len(vals) and not set(map(type, vals)) <= _FLAG_TYPES:
            keep = [v is None or type(v) is bool for v in vals]
            objs, sids, feats, steps, ts, vals, *flags = drop(keep, objs, sids, feats, steps, ts, vals, *flags)
        flags.append(vals)
    if not objs:
        return None, sorted(cand.careful), cand.parsed
    events = _bulk_events(sids, steps, feats, chunked, flags, ts, cand.idx, feature_size, vocab_size is not None,
                          cand.numbers)
    return events, sorted(cand.careful), cand.parsed


class _Candidates:
    """The messages of a poll still on the bulk path: `idx`, their message indices (None: all, in
    order); `careful`, the indices left to `_decode_one`, with `parsed`, the JSON objects already parsed
    of those; `numbers`, every candidate's feature values flattened (from the features check until a drop)."""

    __slots__ = ("idx", "careful", "parsed", "have_objs", "numbers")

    def __init__(self) -> None:
        self.idx: list[int] | None = None
        self.careful: list[int] = []
        self.parsed: dict[int, dict] = {}
        self.have_objs = False  # from the parse on, every drop's first column is the parsed objects
        self.numbers = None

    def drop(self, keep: list, *cols: list) -> list[list]:
        """Leave the candidates where `keep` is false to `_decode_one` (with their parsed objects, once
        the first column is the objects); the columns, filtered."""
        self.numbers = None
        at = range(len(keep)) if self.idx is None else self.idx
        self.careful.extend(i for i, k in zip(at, keep) if not k)
        if self.have_objs:
            self.parsed.update((i, o) for i, k, o in zip(at, keep, cols[0]) if not k and type(o) is dict)
        self.idx = [i for i, k in zip(at, keep) if k]
        return [[v for v, k in zip(col, keep) if k] for col in cols]

    def parse(self, messages: Sequence, max_message_bytes: int) -> list[dict]:
        """The candidates' JSON objects: bytes of at most max_message_bytes, UTF-8, exactly one JSON object."""
        msgs = messages if type(messages) is list else list(messages)
        if set(map(type, msgs)) != {bytes}:
            keep = [type(m) is bytes for m in msgs]
            msgs, = self.drop(keep, msgs)
        if max(map(len, msgs), default=0) > max_message_bytes:
            keep = [len(m) <= max_message_bytes for m in msgs]
            msgs, = self.drop(keep, msgs)
        objs = _parse_many(msgs)
        self.have_objs = True
        if set(map(type, objs)) != {dict}:
            keep = [type(o) is dict for o in objs]
            objs, = self.drop(keep, objs)
        return objs


def _bulk_events(sids: list, steps: list, feats: list, chunked: bool, flags: list, ts: list, idx: list | None,
                 feature_size: int, tokens: bool = False, numbers: list | None = None) -> Events:
    """The `Events` of the bulk path's accepted columns (`idx`: their message indices; None: all); `numbers`:
    every feature value in order, when the features check made that list already."""
    m = len(sids)
    resets, ends = flags
    if steps.count(None) == m:
        step_arr = np.full(m, -1, np.int64)
    elif steps.count(None) == 0:
        step_arr = np.array(steps, dtype=np.int64)
    else:
        step_arr = np.array([-1 if s is None else s for s in steps], dtype=np.int64)
    return Events(
        stream_ids=sids,
        steps=step_arr,
        counts=np.array(list(map(len, feats)), np.int64) if chunked else np.ones(m, np.int64),
        chunk=np.full(m, chunked, dtype=bool),
        reset=np.array([v is True for v in resets], dtype=bool) if True in resets else np.zeros(m, dtype=bool),
        end=np.array([v is True for v in ends], dtype=bool) if True in ends else np.zeros(m, dtype=bool),
        ts=ts,
        features=_ids_to_float32(feats) if tokens else
        _rows_to_float32(list(chain.from_iterable(feats)) if chunked else feats, feature_size, numbers),
        index=np.arange(m, dtype=np.int64) if idx is None else np.array(idx, dtype=np.int64),
    )


def _tokens_keep(feats: list, vocab_size: int) -> list[bool] | None:
    """None when every features value is one token id 0..vocab_size-1 (a JSON integer); else which are."""
    if set(map(type, feats)) == {int} and min(feats) >= 0 and max(feats) < vocab_size:
        return None
    return [type(f) is int and 0 <= f < vocab_size for f in feats]


def _features_keep(feats: list, feature_size: int, chunked: bool) -> tuple[list[bool] | None, list | None]:
    """(None, every number in order) when every features value is F numbers (`chunked`: a non-empty list of
    such lists, a chunk); else (which ones are, None): the others go to `_decode_one`. Checked over whole
    columns first; the flat list of numbers made for the check is what `_rows_to_float32` converts."""
    if not chunked:
        if set(map(type, feats)) == _LIST_TYPE and set(map(len, feats)) == {feature_size}:
            numbers = list(chain.from_iterable(feats))
            if set(map(type, numbers)) <= _NUMBER_TYPES:
                return None, numbers
        return [type(f) is list and len(f) == feature_size and set(map(type, f)) <= _NUMBER_TYPES
                for f in feats], None
    if set(map(type, feats)) == _LIST_TYPE and min(map(len, feats)) > 0:
        rows = list(chain.from_iterable(feats))
        if set(map(type, rows)) == _LIST_TYPE and set(map(len, rows)) == {feature_size}:
            numbers = list(chain.from_iterable(rows))
            if set(map(type, numbers)) <= _NUMBER_TYPES:
                return None, numbers
    return [type(f) is list and len(f) > 0 and set(map(type, f)) == _LIST_TYPE and set(map(len, f)) == {feature_size}
            and set(map(type, chain.from_iterable(f))) <= _NUMBER_TYPES for f in feats], None


def _ts_column_ok(ts: list) -> bool:
    """Every ts None or a number 0..MAX_TS (the fast test of a column; False: check one by one)."""
    if not set(map(type, ts)) <= _TS_OR_NONE:
        return False
    present = [t for t in ts if t is not None]
    try:
        if any(map(math.isnan, present)):
            return False
    except OverflowError:  # an integer beyond float64
        return False
    return min(present) >= 0 and max(present) <= MAX_TS  # exact comparisons, NaN excluded


def _fast_loads(raw: bytes) -> Any:
    """orjson.loads(raw), or `_BAD` where it refuses the message."""
    try:
        return _orjson_loads(raw)
    except ValueError:  # orjson.JSONDecodeError is a ValueError
        return _BAD


def _parse_many(msgs: list[bytes]) -> list:
    """Each message parsed as one JSON value, or `_BAD` where `_loads` would not simply return one
    (invalid UTF-8 or JSON, whitespace around it...): `_decode_one` then says why, or parses it.

    With orjson (a C parser, about 2x faster than the json module's scanner) where it parses. Where
    orjson reads a message differently from the json module, the bulk checks send it to `_decode_one`
    (which uses the json module only) anyway: an integer beyond 64 bits is a float to orjson, so as a
    step or ts it fails the bulk column checks; as a feature it gives the same float32 either way."""
    if _orjson_loads is not None:
        try:
            return list(map(_orjson_loads, msgs))
        except ValueError:
            return list(map(_fast_loads, msgs))
    n = len(msgs)
    try:
        texts = list(map(bytes.decode, msgs))
        pairs = list(map(_scan_json, texts, repeat(0, n)))
    except (UnicodeDecodeError, ValueError, RecursionError):
        pairs = None
    if pairs is None or len(pairs) != n:  # an error, or a StopIteration that ended the map early
        out = []
        for raw in msgs:
            try:
                obj, end = _scan_json(raw.decode("utf-8"), 0)
            except (UnicodeDecodeError, StopIteration, ValueError, RecursionError):
                out.append(_BAD)
                continue
            out.append(obj if end == len(raw) else _BAD)  # an ASCII-only end is counted in bytes == chars
        return out
    objs = list(map(itemgetter(0), pairs))
    if list(map(itemgetter(1), pairs)) != list(map(len, texts)):
        objs = [o if e == len(t) else _BAD for o, (_, e), t in zip(objs, pairs, texts)]
    return objs


def _merge(a: Events, b: Events) -> Events:
    """Two disjoint sets of events of one poll, merged back into message order."""
    index = np.concatenate([a.index, b.index])
    order = np.argsort(index, kind="stable")
    counts = np.concatenate([a.counts, b.counts])
    starts = np.cumsum(counts) - counts  # each event's first row in the concatenated features
    c = counts[order]
    row_order = np.repeat(starts[order] - (np.cumsum(c) - c), c) + np.arange(int(c.sum()))
    ids = a.stream_ids + b.stream_ids
    ts = a.ts + b.ts
    take = order.tolist()
    return Events(
        stream_ids=[ids[e] for e in take],
        steps=np.concatenate([a.steps, b.steps])[order],
        counts=c,
        chunk=np.concatenate([a.chunk, b.chunk])[order],
        reset=np.concatenate([a.reset, b.reset])[order],
        end=np.concatenate([a.end, b.end])[order],
        ts=[ts[e] for e in take],
        features=np.concatenate([a.features, b.features])[row_order],
        index=index[order],
    )


def _loads(text: str) -> Any:
    """json.loads(text), about twice as fast for the usual message: a value from the first character
    with nothing but JSON whitespace after it. Anything else goes through json.loads (same errors)."""
    try:
        obj, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(text)  # leading whitespace, or not JSON: json.loads parses or says why
    if end != len(text) and text[end:].strip(" \t\n\r"):
        return json.loads(text)  # raises "Extra data"
    return obj


def _as_bytes(raw: Any) -> bytes:
    """A message that is neither bytes nor str: a Kafka tombstone (None) is empty, buffers are copied."""
    if raw is None:
        return b""
    try:
        return memoryview(raw).tobytes()  # bytearray, memoryview...; not bytes(int), which makes zeros
    except TypeError:
        raise EventError(INVALID_JSON, f"message is {type(raw).__name__}, not bytes") from None


def _ids_to_float32(ids: list) -> np.ndarray:
    """Token ids (a flat list of ints < 2**24) as a (R, 1) float32 column: exact."""
    return np.array(ids, dtype=np.float32).reshape(len(ids), 1)


def _rows_to_float32(rows: list, feature_size: int, numbers: list | None = None) -> np.ndarray:
    """`_to_float32` of rows of `feature_size` numbers, flattened first (numpy converts a flat list faster);
    `numbers`: that flat list, when made already."""
    if not rows:
        return np.empty((0, feature_size), dtype=np.float32)
    with np.errstate(over="ignore"):  # numbers beyond float32 become inf and are refused later
        try:
            flat = list(chain.from_iterable(rows)) if numbers is None else numbers
            return np.array(flat, dtype=np.float32).reshape(len(rows), feature_size)
        except OverflowError:  # an integer beyond float64
            return _to_float32(rows, feature_size)


def _to_float32(rows: list, feature_size: int) -> np.ndarray:
    if not rows:
        return np.empty((0, feature_size), dtype=np.float32)
    with np.errstate(over="ignore"):  # numbers beyond float32 become inf and are refused below
        try:
            return np.array(rows, dtype=np.float32)
        except OverflowError:  # an integer beyond float64: row by row, marking that row non-finite
            out = np.empty((len(rows), feature_size), dtype=np.float32)
            for r, row in enumerate(rows):
                try:
                    out[r] = row
                except OverflowError:
                    out[r] = np.inf
            return out


def _non_finite_events(events: Events) -> np.ndarray | None:
    """Bool mask of events with a non-finite feature, or None when all are finite (the usual case)."""
    x = events.features
    if x.size == 0 or np.isfinite(x.sum(dtype=np.float64)):
        return None  # one reduction proves every value finite
    bad_rows = ~np.isfinite(x).all(axis=1)
    row_event = np.repeat(np.arange(len(events)), events.counts)
    return np.bincount(row_event[bad_rows], minlength=len(events)) > 0


def concat(parts: list[Events], feature_size: int) -> Events:
    """Events of one poll decoded in parts (each with its `index` set), in order, as one."""
    if not parts:
        return Events.from_arrays([], np.empty((0, feature_size), np.float32))
    if len(parts) == 1:
        return parts[0]
    parts_p = [p.partitions for p in parts]
    return Events(
        stream_ids=[s for p in parts for s in p.stream_ids],
        steps=np.concatenate([p.steps for p in parts]),
        counts=np.concatenate([p.counts for p in parts]),
        chunk=np.concatenate([p.chunk for p in parts]),
        reset=np.concatenate([p.reset for p in parts]),
        end=np.concatenate([p.end for p in parts]),
        ts=[t for p in parts for t in p.ts],
        features=np.concatenate([p.features for p in parts]),
        index=np.concatenate([p.index for p in parts]),
        partitions=None if any(p is None for p in parts_p) else np.concatenate(parts_p),
    )


def select(events: Events, keep: np.ndarray) -> Events:
    """The events where the bool mask `keep` is true (rows follow their events)."""
    row_keep = np.repeat(keep, events.counts)
    idx = np.flatnonzero(keep)
    return Events(
        stream_ids=[events.stream_ids[e] for e in idx],
        steps=events.steps[keep],
        counts=events.counts[keep],
        chunk=events.chunk[keep],
        reset=events.reset[keep],
        end=events.end[keep],
        ts=[events.ts[e] for e in idx],
        features=events.features[row_keep],
        index=events.index[keep],
        partitions=None if events.partitions is None else events.partitions[keep],
    )


# --------------------------------------------------------------------------- dead letters


def dead_letter(code: str, detail: str, source: Any, payload: bytes | str | None, *,
                keep: int | None = None) -> dict:
    """A dead-letter record.

    ``{"error": code, "detail": text, "source": {...}, "payload": text}``. `source` is the transport's
    description of where the message came from: ``{"file": "events.jsonl", "line": 12}`` for JSONL,
    ``{"topic": "events", "partition": 3, "offset": 1042}`` for Kafka. `payload` is the original message
    as text when it is valid UTF-8; otherwise it is the base64 of the raw bytes and the record has
    ``"payload_encoding": "base64"``. An oversized message keeps only its first 4096 bytes; `keep` cuts the
    payload to at most that many bytes (so that the record fits its topic: `streamer.limits`). A cut
    payload is marked ``"payload_truncated": true`` with the original size in ``"payload_bytes"``.
    `detail` is cut to `DETAIL_CHARS` characters.
    """
    if len(detail) > DETAIL_CHARS:
        detail = detail[: DETAIL_CHARS - 3] + "..."
    record: dict = {"error": code, "detail": detail, "source": source}
    raw = message_bytes(payload)
    limit = DEAD_LETTER_PAYLOAD_LIMIT if code == MESSAGE_TOO_LARGE else None
    if keep is not None:
        limit = max(0, keep) if limit is None else min(limit, max(0, keep))
    truncated = limit is not None and len(raw) > limit
    kept = raw[:limit] if truncated else raw
    text = _utf8_or_none(kept, allow_cut_tail=truncated)
    if text is None:
        record["payload"] = base64.b64encode(kept).decode("ascii")
        record["payload_encoding"] = "base64"
    else:
        record["payload"] = text
    if truncated:
        record["payload_truncated"] = True
        record["payload_bytes"] = len(raw)
    return record


def encode_dead_letter(record: dict) -> bytes:
    """The bytes of a dead-letter record as every transport writes them (JSON, ASCII-only)."""
    return json.dumps(record).encode("ascii")


def message_bytes(payload: Any) -> bytes:
    """A message as the bytes it was (str as UTF-8, a tombstone as b"")."""
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    try:
        return b"" if payload is None else memoryview(payload).tobytes()
    except TypeError:
        return repr(payload).encode("utf-8", "backslashreplace")


def _utf8_or_none(raw: bytes, allow_cut_tail: bool) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if allow_cut_tail and exc.start >= len(raw) - 3 and exc.reason == "unexpected end of data":
            return raw[: exc.start].decode("utf-8", "strict")  # a character cut by the truncation
        return None


def payload_bytes(record: dict) -> bytes:
    """The original message bytes (or their kept prefix) from a dead-letter record."""
    if record.get("payload_encoding") == "base64":
        return base64.b64decode(record["payload"])
    return record["payload"].encode("utf-8")


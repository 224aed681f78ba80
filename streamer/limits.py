"""Record-size rules: every record the service writes fits the topic it goes to.

A Kafka topic refuses a record batch larger than its ``max.message.bytes`` (and the producer refuses a
record larger than its ``max_request_size``). A refused record fails its checkpoint, and a checkpoint
that fails every time is a retry loop that stalls every partition. So the transport reads the limits of
the output, dead-letter and changelog topics at start-up (`streamer.kafka.limits`), and the engine keeps
to them with these rules (the JSONL transport has no limit and uses none of this):

- **overhead**: a record costs its key, its value and at most `RECORD_OVERHEAD` bytes (the batch header,
  61 bytes, the record's own header and length varints, at most 31), counted for every record as if it
  were alone in its batch (the producer splits a batch that is too large; it cannot split a record);
- **dead letters** (`fit_dead_letter`): keyed by the original key when that is at most `MAX_KEY_BYTES`
  (the longest valid stream id in UTF-8), else unkeyed. A dead letter that would not fit keeps only the
  longest prefix of the payload that fits, marked ``"payload_truncated": true`` with the original size
  in ``"payload_bytes"``. Every dead-letter code is treated alike;
- **predictions** (`PredictionLimit`): one record per event, except that a chunk whose record would
  not fit is split into several records of consecutive steps (each with its first ``step``). An event
  for which even a one-step record would not fit (a tiny topic limit and a long stream id) is
  refused as ``output_too_large`` before it changes any state;
- **changelog**: a stream's state record has a size known from the model (`changelog_record_bytes`);
  serve refuses to start when the changelog topic cannot hold it.
"""

from __future__ import annotations

from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

import numpy as np

from streamer import schema

RECORD_OVERHEAD = 128  # batch header (61) + record header and varints (<= 31), rounded up
MAX_KEY_BYTES = 4 * schema.MAX_STREAM_ID_CHARS  # the longest valid stream id, in UTF-8
FLOAT_TEXT_BYTES = 16  # the longest float32 text the engine writes ("-1.1754944e-38": 14; capped at 16)
# A prediction record's literal text: {"stream_id":,"step":,"predictions":[],"model":,"ts":} and the
# longest step (2**53-1: 16 digits) and ts (a float repr: at most 24 characters), rounded up.
_PREDICTION_FIXED = 128
_WORST_QUOTED_ID = 12 * schema.MAX_STREAM_ID_CHARS + 2  # every character a \\ud83d\\ude00 pair
_DETAIL_STEPS = (None, 200, 0)  # how far a dead letter's detail is cut when even an empty payload does not fit


def value_budget(record_bytes: int, key: bytes | None) -> int:
    """The most value bytes a record with `key` may have under a topic limit of `record_bytes`."""
    return record_bytes - RECORD_OVERHEAD - (0 if key is None else len(key))


# --------------------------------------------------------------------------- dead letters


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The key a dead letter is written with: the original message key, unless it is longer than any
    valid stream id (then none, so that the dead letter fits whatever the key was)."""
    return key if key is not None and len(key) <= MAX_KEY_BYTES else None


def fit_dead_letter(code: str, detail: str, source: Any, payload, max_value_bytes: int | None) -> dict:
    """`schema.dead_letter(...)`, its payload cut so that its encoding is at most `max_value_bytes`
    (None: no limit). The longest payload prefix that fits is found by bisection."""
    record = schema.dead_letter(code, detail, source, payload)
    if max_value_bytes is None or len(schema.encode_dead_letter(record)) <= max_value_bytes:
        return record
    size = len(schema.message_bytes(payload))
    for cut in _DETAIL_STEPS:
        text = detail if cut is None else detail[:cut]
        best = schema.dead_letter(code, text, source, payload, keep=0)
        if len(schema.encode_dead_letter(best)) > max_value_bytes:
            continue  # the detail itself is too long for this topic: cut it further
        lo, hi = 0, min(size, max_value_bytes)  # every payload byte costs at least one byte
        while lo < hi:
            mid = (lo + hi + 1) // 2
            candidate = schema.dead_letter(code, text, source, payload, keep=mid)
            if len(schema.encode_dead_letter(candidate)) <= max_value_bytes:
                lo, best = mid, candidate
            else:
                hi = mid - 1
        return best
    return best  # not even an empty dead letter fits: serve checks the topic against this at start-up


def smallest_dead_letter_bytes(source: Any) -> int:
    """The size of a dead letter with an empty detail and payload (the least a dead-letter topic must hold)."""
    record = schema.dead_letter(schema.INTERNAL_ERROR, "", source, b"x", keep=0)
    return len(schema.encode_dead_letter(record)) + MAX_KEY_BYTES + RECORD_OVERHEAD


# --------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class PredictionLimit:
    """How many steps one prediction record may carry under the output topic's limit."""

    record_bytes: int  # the output topic's limit for one record (key + value + overhead)
    outputs: int  # the model's output size
    model_version: str

    @property
    def step_bytes(self) -> int:
        """The most one step adds to a record: ``[v, v, ...]`` and the ``, `` before it."""
        return max(1, self.outputs) * (FLOAT_TEXT_BYTES + 2) + 2

    def _head_bytes(self, quoted_id: int) -> int:
        return _PREDICTION_FIXED + quoted_id + len(_quote(self.model_version))

    def uniform_cap(self) -> int:
        """Steps per record that fit for any valid stream id and ts (< 1: some events need `caps`)."""
        room = self.record_bytes - RECORD_OVERHEAD - MAX_KEY_BYTES - self._head_bytes(_WORST_QUOTED_ID)
        return room // self.step_bytes

    def smallest_cap(self) -> int:
        """Steps per record for the shortest stream id (< 1: no event can ever be served)."""
        room = self.record_bytes - RECORD_OVERHEAD - 1 - self._head_bytes(3)
        return room // self.step_bytes

    def caps(self, stream_ids: list[str]) -> np.ndarray:
        """Steps per record for each of these stream ids (exact for the id, worst case for the rest)."""
        quoted = np.fromiter(map(len, map(_quote, stream_ids)), np.int64, count=len(stream_ids))
        keys = np.fromiter((len(s.encode("utf-8")) for s in stream_ids), np.int64, count=len(stream_ids))
        room = self.record_bytes - RECORD_OVERHEAD - keys - self._head_bytes(0) - quoted
        return room // self.step_bytes


# --------------------------------------------------------------------------- changelog


def changelog_record_bytes(model_version: str, state_size: int) -> int:
    """The largest changelog record of a stream of this model (longest id, key and numbers), overhead included."""
    from streamer.state import StreamRecord

    worst = StreamRecord(stream_id="\U0010ffff" * schema.MAX_STREAM_ID_CHARS, state=np.zeros(state_size, np.float32),
                         last_step=schema.MAX_STEP, last_seen=-1.7976931348623157e308, model_version=model_version,
                         partition=2**31 - 1)
    return len(worst.to_bytes()) + MAX_KEY_BYTES + RECORD_OVERHEAD

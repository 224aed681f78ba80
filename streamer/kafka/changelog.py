"""The changelog record codec: one compacted record per stream.

- key: the stream id, UTF-8;
- value: `streamer.state.StreamRecord.to_bytes()` (JSON: format, model version, state size, the state as
  base64 float32, the last applied step, last seen time, partition), or None (a tombstone: the stream
  ended, expired or was evicted, and compaction deletes it);
- partition: the stream's input partition (explicitly, not by key hash), so that restoring input
  partition p reads changelog partition p whatever partitioner the event producers used.

`fold` reduces a partition's records, oldest first, to the latest value per key (what compaction
keeps eventually); `decode` turns a value back into a `StreamRecord`, raising `StateMismatch` for a
record it cannot read.
"""

from __future__ import annotations

from typing import Iterable

from streamer.state import StateMismatch, StreamRecord

__all__ = ["StateMismatch", "decode", "encode", "encode_key", "fold"]


def encode_key(stream_id: str) -> bytes:
    return stream_id.encode("utf-8")


def encode(record: StreamRecord) -> bytes:
    return record.to_bytes()


def decode(key: bytes | None, value: bytes) -> StreamRecord:
    """The record's state; the key must name the stream the value holds."""
    record = StreamRecord.from_bytes(value)
    if key is not None and key != encode_key(record.stream_id):
        raise StateMismatch(f"changelog key {key[:80]!r} does not match the record's stream id "
                            f"{record.stream_id[:80]!r}")
    return record


def fold(records: Iterable[tuple[bytes | None, bytes | None]], into: dict | None = None) -> dict[bytes, bytes]:
    """Latest value per key of (key, value) pairs in log order; a None value (tombstone) deletes the key."""
    table: dict[bytes, bytes] = {} if into is None else into
    for key, value in records:
        if key is None:
            continue  # not ours: changelog records always have a key
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table

"""Per-stream state in dense arrays: one slot (row) per active stream.

The columns, indexed by slot, are public so the engine can gather and scatter whole waves at once:

- ``state``     (capacity, S) float32: the flat StepModel state of the stream in that slot
- ``last_step`` (capacity,)   int64:   the last applied step, -1 before the first one
- ``last_seen`` (capacity,)   float64: clock time (seconds) of the stream's last event, for the TTL
- ``partition`` (capacity,)   int64:   the Kafka partition the stream's events come from (-1: none)

Capacity doubles when it runs out. Besides slots, the store keeps what a checkpointing transport needs:
which streams changed since the last `take_changes` (write their records) and which were freed
(end/expired/evicted: write tombstones); `export`/`restore` of one stream as a `StreamRecord` that
carries the model version and state size, so a record of another model is refused, never reused;
and `drop_partition` to let go of every stream of a revoked partition (no tombstones: the state lives on
in the checkpoint for the partition's next owner).

`savepoint(stream_ids)` / `rollback(savepoint)` undo one poll: the engine takes a savepoint of the poll's
streams before applying it, and if applying raises, rolls back to it (streams created since are removed,
released ones come back, the poll's streams get their rows and pending tombstones back) and retries the
poll event by event. A savepoint costs a copy of the poll's streams' rows; releases are journaled while
it is open.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from itertools import repeat
from typing import Sequence

import numpy as np

_quote = json.encoder.encode_basestring_ascii  # a JSON string as json.dumps writes it (ASCII, escaped)
RECORD_FORMAT = "streamer.state/1"


class StateMismatch(ValueError):
    """A state record cannot be restored into this store (other model, other state size, bad record)."""


@dataclass
class StreamRecord:
    """One stream's state, as checkpointed: everything needed to resume it on another process."""

    stream_id: str
    state: np.ndarray  # (S,) float32
    last_step: int
    last_seen: float
    model_version: str
    partition: int = -1
    state_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.state = np.asarray(self.state, dtype=np.float32).reshape(-1)
        self.state_size = int(self.state.shape[0])

    def to_bytes(self) -> bytes:
        """JSON (UTF-8) with the state as base64 of little-endian float32."""
        return json.dumps({
            "format": RECORD_FORMAT,
            "model": self.model_version,
            "state_size": self.state_size,
            "stream_id": self.stream_id,
            "last_step": self.last_step,
            "last_seen": self.last_seen,
            "partition": self.partition,
            "state": base64.b64encode(self.state.astype("<f4").tobytes()).decode("ascii"),
        }, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "StreamRecord":
        try:
            obj = json.loads(data)
            if obj.get("format") != RECORD_FORMAT:
                raise StateMismatch(f"state record format {obj.get('format')!r} is not {RECORD_FORMAT!r}")
            state = np.frombuffer(base64.b64decode(obj["state"], validate=True), dtype="<f4").astype(np.float32)
            if state.shape[0] != obj["state_size"]:
                raise StateMismatch(f"state record holds {state.shape[0]} floats, but says state_size "
                                    f"{obj['state_size']}")
            return cls(stream_id=obj["stream_id"], state=state, last_step=int(obj["last_step"]),
                       last_seen=float(obj["last_seen"]), model_version=obj["model"],
                       partition=int(obj.get("partition", -1)))
        except StateMismatch:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateMismatch(f"not a valid state record: {exc}") from None


@dataclass
class Changes:
    """Streams changed since the last `take_changes`, as (stream_id, partition) pairs.

    Write tombstones for `freed` first, then records for `updated` (a stream can be freed and started
    again in one interval; then it is only in `updated`).
    """

    updated: list[tuple[str, int]]
    freed: list[tuple[str, int]]


@dataclass
class Savepoint:
    """The store as it was for a set of streams (see `StateStore.savepoint`)."""

    ids: list[str]  # the streams named by the poll, distinct
    present: list[str]  # those that had state, and their rows:
    state: np.ndarray
    last_step: np.ndarray
    last_seen: np.ndarray
    partition: np.ndarray
    dirty: np.ndarray
    recency: np.ndarray
    freed: dict[str, int]  # the named streams' pending tombstones
    tick: int
    created: set[str] = field(default_factory=set)  # streams created since
    released: dict[str, tuple] = field(default_factory=dict)  # other streams released since: their rows


class StateStore:
    """Slots for up to `max_streams` concurrent streams (None: unbounded) of one model's state."""

    def __init__(self, state_size: int, *, model_version: str, initial_state: np.ndarray | None = None,
                 capacity: int = 1024, max_streams: int | None = None):
        if state_size < 1:
            raise ValueError(f"state_size must be >= 1, got {state_size}")
        if max_streams is not None and max_streams < 1:
            raise ValueError(f"max_streams must be >= 1 or None, got {max_streams}")
        self.state_size = int(state_size)
        self.model_version = model_version
        self.max_streams = max_streams
        self.initial_state = (np.zeros(state_size, np.float32) if initial_state is None
                              else np.asarray(initial_state, np.float32).reshape(state_size))
        capacity = max(1, int(capacity) if max_streams is None else min(int(capacity), max_streams))
        self.state = np.zeros((capacity, state_size), np.float32)
        self.last_step = np.full(capacity, -1, np.int64)
        self.last_seen = np.zeros(capacity, np.float64)
        self.partition = np.full(capacity, -1, np.int64)
        self._recency = np.zeros(capacity, np.int64)  # acquire() call count at the last touch (LRU)
        self._active = np.zeros(capacity, bool)
        self._dirty = np.zeros(capacity, bool)
        self._ids: list[str | None] = [None] * capacity
        self._index: dict[str, int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))  # pop() hands out low slots first
        self._freed: dict[str, int] = {}  # tombstones since the last take_changes: id -> partition
        self._tick = 0
        self._savepoint: Savepoint | None = None  # open: creations and releases are journaled

    # ------------------------------------------------------------------ lookup

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._index

    @property
    def capacity(self) -> int:
        return self.state.shape[0]

    def slot_of(self, stream_id: str) -> int:
        """The stream's slot, or -1 when it has no state here."""
        return self._index.get(stream_id, -1)

    def stream_ids(self) -> list[str]:
        return list(self._index)

    # ------------------------------------------------------------------ acquire / write / free

    def acquire(self, stream_ids: Sequence[str], now: float, partitions: np.ndarray | None = None,
                moved: list | None = None) -> tuple[np.ndarray, int, list[str]]:
        """Slots for a poll's events (one id per event, repeats allowed); touches each stream.

        New streams get a fresh slot (initial state, last_step -1). At `max_streams`, the least
        recently used streams not named in this call are evicted to make room; if the call itself
        names more new streams than that frees, the excess get slot -1 (refused). With `moved` (and
        `partitions`), every stream whose events come from another partition than its state, or from two
        partitions in this call, is appended to it once as (stream_id, one partition, the other).
        Returns (slots (E,) int64, number of streams created, evicted stream ids).
        """
        get = self._index.get
        slots = np.fromiter(map(get, stream_ids, repeat(-1)), np.int64, count=len(stream_ids))
        old = None
        if moved is not None and partitions is not None:
            old = np.where(slots >= 0, self.partition[slots], -1)  # the partitions the streams' state came from
        self._tick += 1
        evicted: list[str] = []
        n_room = 0
        new_pos = np.flatnonzero(slots < 0)
        if len(new_pos):
            self._recency[slots[slots >= 0]] = self._tick  # protect this poll's streams from eviction
            new_ids = list(dict.fromkeys([stream_ids[i] for i in new_pos]))
            n_room = len(new_ids)
            if self.max_streams is not None and len(self._index) + n_room > self.max_streams:
                evicted = self._evict_lru(len(self._index) + n_room - self.max_streams)
                n_room = min(n_room, self.max_streams - len(self._index))
            self._create(new_ids[:n_room])
            slots[new_pos] = [get(stream_ids[i], -1) for i in new_pos]
        ok = slots >= 0
        touched = slots[ok] if len(new_pos) else slots
        self.last_seen[touched] = now
        self._recency[touched] = self._tick
        if partitions is not None:
            self.partition[touched] = partitions[ok] if len(new_pos) else partitions
            if old is not None:
                self._moved(stream_ids, slots, old, partitions, moved)
        return slots, n_room, evicted

    def _moved(self, stream_ids: Sequence[str], slots: np.ndarray, old: np.ndarray, partitions: np.ndarray,
                moved: list) -> None:
        """Streams whose events come from another partition than their state (`old`), or from two partitions
        in this call (then the slot holds the last one's partition): (id, one partition, the other)."""
        ok = slots >= 0
        now = np.where(ok, self.partition[slots], -1)
        diff = ((old >= 0) & (old != partitions)) | (ok & (now != partitions))
        if not diff.any():
            return
        seen = set()
        for e in np.flatnonzero(diff).tolist():
            sid = stream_ids[e]
            if sid not in seen:
                seen.add(sid)
                first = int(old[e]) if old[e] >= 0 and old[e] != partitions[e] else int(now[e])
                moved.append((sid, first, int(partitions[e])))

    def _create(self, stream_ids: list[str]) -> None:
        n = len(stream_ids)
        if n == 0:
            return
        if len(self._free) < n:
            self._grow(len(self._index) + n)
        slots = [self._free.pop() for _ in range(n)]
        if self._savepoint is not None:
            self._savepoint.created.update(stream_ids)
        for sid, slot in zip(stream_ids, slots):
            self._ids[slot] = sid
            self._index[sid] = slot
            self._freed.pop(sid, None)
        self.state[slots] = self.initial_state
        self.last_step[slots] = -1
        self.partition[slots] = -1
        self._active[slots] = True
        self._dirty[slots] = True  # a (re)started stream's fresh state supersedes an older record

    def _grow(self, needed: int) -> None:
        old = self.capacity
        new = old
        while new < needed:
            new *= 2
        if self.max_streams is not None:
            new = max(needed, min(new, self.max_streams))
        extra = new - old

        def grown(a: np.ndarray, fill) -> np.ndarray:
            out = np.empty((new,) + a.shape[1:], a.dtype)
            out[:old] = a
            out[old:] = fill
            return out

        self.state = grown(self.state, 0.0)
        self.last_step = grown(self.last_step, -1)
        self.last_seen = grown(self.last_seen, 0.0)
        self.partition = grown(self.partition, -1)
        self._recency = grown(self._recency, 0)
        self._active = grown(self._active, False)
        self._dirty = grown(self._dirty, False)
        self._ids.extend([None] * extra)
        self._free[:0] = range(new - 1, old - 1, -1)  # keep pop() order: lowest slot first

    def _evict_lru(self, k: int) -> list[str]:
        candidates = np.flatnonzero(self._active & (self._recency < self._tick))
        if len(candidates) > k:
            order = np.argsort(self._recency[candidates], kind="stable")
            candidates = candidates[order[:k]]
        return self._release(candidates, tombstone=True)

    def write(self, slots: np.ndarray, new_state: np.ndarray, steps: np.ndarray) -> None:
        """Store the new state and last applied step of distinct `slots` (one wave)."""
        self.state[slots] = new_state
        self.last_step[slots] = steps
        self._dirty[slots] = True

    def restart(self, slots: np.ndarray, last_steps: np.ndarray | int = -1) -> None:
        """Give distinct `slots` the initial state again and set their last step (reset / gap policy)."""
        self.state[slots] = self.initial_state
        self.last_step[slots] = last_steps
        self._dirty[slots] = True

    def free(self, slots: np.ndarray | Sequence[int]) -> list[str]:
        """Free the streams in `slots` (ended); returns their ids. They become tombstones."""
        return self._release(np.asarray(slots, np.int64), tombstone=True)

    def free_ids(self, stream_ids: Sequence[str]) -> list[str]:
        return self.free([self._index[s] for s in stream_ids if s in self._index])

    def expire(self, now: float, ttl: float | None) -> list[str]:
        """Free every stream idle for more than `ttl` seconds at clock time `now`; returns their ids."""
        if ttl is None or not self._index:
            return []
        idle = np.flatnonzero(self._active & (self.last_seen < now - ttl))
        return self._release(idle, tombstone=True) if len(idle) else []

    def drop_partition(self, partition: int) -> list[str]:
        """Let go of every stream of `partition` (revoked): no tombstones, pending changes discarded.

        Checkpoint first (`take_changes`) if their latest state must survive.
        """
        slots = np.flatnonzero(self._active & (self.partition == partition))
        dropped = self._release(slots, tombstone=False)
        for sid, p in list(self._freed.items()):
            if p == partition:
                del self._freed[sid]
        return dropped

    def _release(self, slots: np.ndarray, tombstone: bool) -> list[str]:
        ids = []
        sp = self._savepoint
        for slot in slots.tolist():
            sid = self._ids[slot]
            if sid is None:
                continue
            if sp is not None and sid not in sp.released and sid not in sp.created:
                sp.released[sid] = self._row(slot)
            ids.append(sid)
            del self._index[sid]
            self._ids[slot] = None
            if tombstone:
                self._freed[sid] = int(self.partition[slot])
            self._free.append(slot)
        self._active[slots] = False
        self._dirty[slots] = False
        return ids

    # ------------------------------------------------------------------ savepoints (undoing one poll)

    def savepoint(self, stream_ids: Sequence[str]) -> Savepoint:
        """Remember the named streams as they are now, and journal creations and releases until
        `release_savepoint` or `rollback`. One savepoint at a time."""
        ids = list(dict.fromkeys(stream_ids))
        slots = np.fromiter(map(self._index.get, ids, repeat(-1)), np.int64, count=len(ids))
        have = slots >= 0
        s = slots[have] if not have.all() else slots
        freed = {sid: self._freed[sid] for sid in ids if sid in self._freed} if self._freed else {}
        sp = Savepoint(ids=ids, present=[self._ids[i] for i in s.tolist()], state=self.state[s],
                       last_step=self.last_step[s], last_seen=self.last_seen[s], partition=self.partition[s],
                       dirty=self._dirty[s], recency=self._recency[s], freed=freed, tick=self._tick)
        self._savepoint = sp
        return sp

    def release_savepoint(self) -> None:
        """The poll went through: stop journaling."""
        self._savepoint = None

    def rollback(self, sp: Savepoint) -> None:
        """Put the store back as it was at `sp` (see the module docstring); slots may differ."""
        self._savepoint = None
        created = [sid for sid in sp.created if sid in self._index]
        self._release(np.array([self._index[sid] for sid in created], np.int64), tombstone=False)
        for sid in sp.created:
            self._freed.pop(sid, None)
        rows = dict(sp.released)
        for i, sid in enumerate(sp.present):
            rows[sid] = (sp.state[i], sp.last_step[i], sp.last_seen[i], sp.partition[i], sp.dirty[i], sp.recency[i])
        missing = [sid for sid in rows if sid not in self._index]
        self._create(missing)
        for sid, row in rows.items():
            self._set_row(self._index[sid], row)
            self._freed.pop(sid, None)
        for sid in sp.ids:
            if sid in sp.freed:
                self._freed[sid] = sp.freed[sid]
            else:
                self._freed.pop(sid, None)
        self._tick = sp.tick

    def _row(self, slot: int) -> tuple:
        return (self.state[slot].copy(), int(self.last_step[slot]), float(self.last_seen[slot]),
                int(self.partition[slot]), bool(self._dirty[slot]), int(self._recency[slot]))

    def _set_row(self, slot: int, row: tuple) -> None:
        (self.state[slot], self.last_step[slot], self.last_seen[slot], self.partition[slot], self._dirty[slot],
         self._recency[slot]) = row

    # ------------------------------------------------------------------ checkpoints

    def take_changes(self) -> Changes:
        """Streams whose state changed, and streams freed, since the previous call; then forget them."""
        dirty = np.flatnonzero(self._dirty)
        self._dirty[dirty] = False
        updated = [(self._ids[s], int(self.partition[s])) for s in dirty.tolist()]
        freed = list(self._freed.items())
        self._freed.clear()
        return Changes(updated=updated, freed=freed)

    def export(self, stream_id: str) -> StreamRecord:
        slot = self._index[stream_id]
        return StreamRecord(stream_id=stream_id, state=self.state[slot].copy(),
                            last_step=int(self.last_step[slot]), last_seen=float(self.last_seen[slot]),
                            model_version=self.model_version, partition=int(self.partition[slot]))

    def export_bytes(self, stream_ids: Sequence[str]) -> list[bytes]:
        """``export(sid).to_bytes()`` of each stream, byte for byte, written for all of them at once: a
        checkpoint writes every changed stream (~1 us a stream instead of ~7 with a dict and json.dumps each,
        time the serve loop spends between two polls)."""
        if not stream_ids:
            return []
        slots = np.fromiter(map(self._index.__getitem__, stream_ids), np.int64, len(stream_ids))
        states = np.ascontiguousarray(self.state[slots], dtype="<f4")
        row = states.shape[1] * 4
        raw = memoryview(states.tobytes())
        b64 = [binascii.b2a_base64(raw[i:i + row], newline=False).decode("ascii") for i in range(0, len(raw), row)]
        seen = self.last_seen[slots]
        seen_text = list(map(float.__repr__, seen.tolist())) if np.isfinite(seen).all() else \
            [json.dumps(v) for v in seen.tolist()]
        fmt = ('{"format":%s,"model":%s,"state_size":%d,"stream_id":' % (
            _quote(RECORD_FORMAT), _quote(self.model_version), self.state_size)).replace("%", "%%") + \
            '%s,"last_step":%d,"last_seen":%s,"partition":%d,"state":"%s"}'
        return [(fmt % r).encode("ascii") for r in zip(map(_quote, stream_ids), self.last_step[slots].tolist(),
                                                          seen_text, self.partition[slots].tolist(), b64)]

    def restore(self, record: StreamRecord) -> None:
        """Make a checkpointed stream active again (replacing any state it has here).

        Refuses (StateMismatch) a record of another model version or state size.
        """
        self.restore_many([record])

    def restore_many(self, records: Sequence[StreamRecord]) -> None:
        """Restore many checkpointed streams at once (the last record of an id wins).

        Every record is checked first: if one belongs to another model, has another state size or holds
        invalid values, StateMismatch is raised and nothing is restored. Restored streams count as
        checkpointed (not changed). At `max_streams`, least recently used streams are evicted as usual.
        """
        latest = {r.stream_id: r for r in records}
        for record in latest.values():
            self._check_record(record)
        if not latest:
            return
        ids = list(latest)
        recs = list(latest.values())
        if self.max_streams is not None and len(ids) > self.max_streams:
            raise StateMismatch(f"no room to restore {len(ids)} streams: --max-streams is {self.max_streams}")
        slots, _, _ = self.acquire(ids, max(r.last_seen for r in recs),
                                   np.array([r.partition for r in recs], np.int64))
        self.state[slots] = np.stack([r.state for r in recs])
        self.last_step[slots] = [r.last_step for r in recs]
        self.last_seen[slots] = [r.last_seen for r in recs]
        self._dirty[slots] = False  # equal to their checkpoint

    def _check_record(self, record: StreamRecord) -> None:
        if record.model_version != self.model_version:
            raise StateMismatch(f"state of stream {record.stream_id!r} was made by model {record.model_version}, "
                                f"this store serves model {self.model_version}")
        if record.state_size != self.state_size:
            raise StateMismatch(f"state of stream {record.stream_id!r} has {record.state_size} floats, "
                                f"this model needs {self.state_size}")
        if not np.isfinite(record.state).all() or not math.isfinite(record.last_seen) or record.last_step < -1:
            raise StateMismatch(f"state record of stream {record.stream_id!r} holds invalid values")

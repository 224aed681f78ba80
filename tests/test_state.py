"""StateStore: dense slots, growth, LRU cap, TTL, checkpoint changes, export/restore, partitions."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from streamer.state import Changes, StateMismatch, StateStore, StreamRecord

S = 4


def store(**kw) -> StateStore:
    kw.setdefault("model_version", "v1")
    return StateStore(S, **kw)


def test_acquire_gives_one_slot_per_stream_and_fresh_state():
    st = store(initial_state=np.full(S, 0.5, np.float32))
    slots, created, evicted = st.acquire(["a", "b", "a", "c"], now=10.0)
    assert slots[0] == slots[2] and len(set(slots.tolist())) == 3
    assert created == 3 and evicted == []
    assert len(st) == 3 and "b" in st and st.slot_of("zz") == -1
    np.testing.assert_array_equal(st.state[slots], np.full((4, S), 0.5, np.float32))
    assert st.last_step[slots].tolist() == [-1, -1, -1, -1]
    assert st.last_seen[slots].tolist() == [10.0] * 4


def test_capacity_grows_geometrically_and_keeps_state():
    st = store(capacity=2)
    slots, _, _ = st.acquire(["a", "b"], 0.0)
    st.write(slots, np.arange(2 * S, dtype=np.float32).reshape(2, S), np.array([3, 4]))
    ids = [f"s{i}" for i in range(9)]
    st.acquire(ids, 1.0)
    assert st.capacity == 16 and len(st) == 11
    a = st.slot_of("a")
    np.testing.assert_array_equal(st.state[a], np.arange(S, dtype=np.float32))
    assert st.last_step[st.slot_of("b")] == 4


def test_freed_slots_are_reused_and_reset():
    st = store(capacity=2)
    slots, _, _ = st.acquire(["a", "b"], 0.0)
    st.write(slots, np.ones((2, S), np.float32), np.array([5, 5]))
    assert st.free([slots[0]]) == ["a"]
    new, created, _ = st.acquire(["c"], 1.0)
    assert created == 1 and new[0] == slots[0] and st.capacity == 2
    assert st.state[new[0]].tolist() == [0.0] * S and st.last_step[new[0]] == -1


def test_lru_eviction_at_the_cap_spares_the_streams_of_the_current_call():
    st = store(max_streams=3)
    st.acquire(["a"], 0.0)
    st.acquire(["b"], 1.0)
    st.acquire(["c"], 2.0)
    st.acquire(["a"], 3.0)  # a is now the most recently used
    slots, created, evicted = st.acquire(["b", "d"], 4.0)  # b named here, so c (oldest besides b) goes
    assert evicted == ["c"] and created == 1
    assert sorted(st.stream_ids()) == ["a", "b", "d"]
    assert (slots >= 0).all()


def test_more_new_streams_in_one_call_than_the_cap_refuses_the_excess():
    st = store(max_streams=2)
    st.acquire(["old"], 0.0)
    slots, created, evicted = st.acquire(["x", "y", "z", "x"], 1.0)
    assert evicted == ["old"] and created == 2
    assert slots.tolist()[3] == slots.tolist()[0] >= 0
    assert slots[2] == -1 and "z" not in st and len(st) == 2


def test_expire_frees_idle_streams_with_an_injected_clock():
    st = store()
    st.acquire(["a", "b"], now=100.0)
    st.acquire(["b"], now=150.0)
    assert st.expire(now=170.0, ttl=60.0) == ["a"]
    assert st.expire(now=170.0, ttl=None) == []
    assert st.stream_ids() == ["b"]
    assert st.take_changes().freed == [("a", -1)]


def test_take_changes_reports_updates_and_tombstones_once():
    st = store()
    slots, _, _ = st.acquire(["a", "b", "c"], 0.0, partitions=np.array([0, 1, 1]))
    st.take_changes()
    st.write(slots[:1], np.ones((1, S), np.float32), np.array([0]))
    st.free([slots[1]])
    ch = st.take_changes()
    assert ch == Changes(updated=[("a", 0)], freed=[("b", 1)])
    assert st.take_changes() == Changes(updated=[], freed=[])
    # freed then started again: only an update (its fresh state supersedes the tombstone)
    st.free([st.slot_of("c")])
    st.acquire(["c"], 1.0, partitions=np.array([1]))
    assert st.take_changes() == Changes(updated=[("c", 1)], freed=[])


def test_export_restore_round_trip_through_bytes():
    st = store()
    slots, _, _ = st.acquire(["a"], 42.0, partitions=np.array([3]))
    st.write(slots, np.array([[1.5, -2, 3, 4e-8]], np.float32), np.array([17]))
    data = st.export("a").to_bytes()
    rec = StreamRecord.from_bytes(data)
    assert rec.stream_id == "a" and rec.last_step == 17 and rec.last_seen == 42.0 and rec.partition == 3
    other = store()
    other.restore(rec)
    s = other.slot_of("a")
    np.testing.assert_array_equal(other.state[s], st.state[slots[0]])
    assert other.last_step[s] == 17 and other.partition[s] == 3
    assert other.take_changes().updated == []  # restored state equals its checkpoint


def test_export_bytes_of_many_streams_are_their_records_bytes():
    """What a checkpoint writes for all changed streams at once is each stream's `to_bytes()`, byte for byte:
    escaped and non-ASCII ids, a '%' in the model version, odd floats, any last_seen."""
    st = store(model_version="v%s\u00e9")
    ids = ["a", 'q"\\%d', "\u00fc\U0001f600", "x" * 256]
    slots, _, _ = st.acquire(ids, 42.5, partitions=np.array([0, 3, -1, 7]))
    st.write(slots, np.array([[1.5, -2, 3, 4e-8], [np.nan, np.inf, -0.0, 1e38], [0, 0, 0, 0], [1, 2, 3, 4]],
                             np.float32), np.array([17, 0, 2**40, -1]))
    st.last_seen[slots[1]] = 1e300
    st.last_seen[slots[2]] = float("nan")  # never a clock time, but written as json.dumps writes it
    assert st.export_bytes(ids) == [st.export(sid).to_bytes() for sid in ids]
    assert st.export_bytes(ids[1:2]) == [st.export(ids[1]).to_bytes()] and st.export_bytes([]) == []


def test_restore_refuses_another_model_or_state_size():
    rec = StreamRecord("a", np.zeros(S, np.float32), 3, 0.0, model_version="v1")
    with pytest.raises(StateMismatch, match="model"):
        store(model_version="v2").restore(rec)
    with pytest.raises(StateMismatch, match="floats"):
        StateStore(S + 1, model_version="v1").restore(rec)
    with pytest.raises(StateMismatch):
        StreamRecord.from_bytes(b'{"format": "something else"}')
    with pytest.raises(StateMismatch):
        StreamRecord.from_bytes(b"not json")
    bad = rec.to_bytes().replace(b'"state_size":4', b'"state_size":5')
    with pytest.raises(StateMismatch):
        StreamRecord.from_bytes(bad)


def test_drop_partition_frees_without_tombstones():
    st = store()
    st.acquire(["a", "b", "c"], 0.0, partitions=np.array([0, 1, 0]))
    st.take_changes()
    st.free([st.slot_of("c")])  # pending tombstone of partition 0
    assert st.drop_partition(0) == ["a"]
    assert st.stream_ids() == ["b"]
    assert st.take_changes() == Changes(updated=[], freed=[])


def test_partition_tag_follows_the_latest_event():
    st = store()
    st.acquire(["a"], 0.0, partitions=np.array([2]))
    st.acquire(["a", "b"], 1.0, partitions=np.array([5, 6]))
    assert st.partition[st.slot_of("a")] == 5 and st.partition[st.slot_of("b")] == 6


def test_restore_many_loads_all_or_nothing():
    src = store()
    slots, _, _ = src.acquire(["a", "b", "c"], 5.0, partitions=np.array([1, 1, 2]))
    src.write(slots, np.arange(3 * S, dtype=np.float32).reshape(3, S), np.array([4, 5, 6]))
    records = [src.export(s) for s in ("a", "b", "c")]
    dst = store()
    dst.acquire(["a"], 1.0)  # replaced by its record
    dst.restore_many(records)
    for r in records:
        slot = dst.slot_of(r.stream_id)
        np.testing.assert_array_equal(dst.state[slot], r.state)
        assert dst.last_step[slot] == r.last_step and dst.partition[slot] == r.partition
    assert dst.take_changes().updated == []
    bad = StreamRecord("z", np.zeros(S, np.float32), 0, 0.0, model_version="other")
    fresh = store()
    with pytest.raises(StateMismatch):
        fresh.restore_many(records + [bad])
    assert len(fresh) == 0
    capped = store(max_streams=2)
    with pytest.raises(StateMismatch, match="no room"):
        capped.restore_many(records)
    assert len(capped) == 0


def _snapshot(st: StateStore) -> dict:
    """Everything observable about a store: each stream's record, and the pending tombstones."""
    out = {sid: st.export(sid) for sid in st.stream_ids()}
    return {sid: (r.state.tobytes(), r.last_step, r.last_seen, r.partition) for sid, r in out.items()}


def test_rollback_undoes_creations_writes_ends_evictions_and_expiry():
    st = store(max_streams=4)
    st.acquire(["a", "b", "c"], now=1.0, partitions=np.array([0, 1, 1]))
    st.write(np.array([st.slot_of("a"), st.slot_of("b")]), np.ones((2, S), np.float32), np.array([3, 4]))
    st.free_ids(["c"])
    st.take_changes()
    st.acquire(["c", "d"], now=2.0, partitions=np.array([1, 0]))  # c started again after its tombstone
    st.free_ids(["d"])  # d's tombstone is pending
    st.write(np.array([st.slot_of("a")]), np.full((1, S), 2, np.float32), np.array([5]))  # a is dirty
    reference = copy.deepcopy(st)

    sp = st.savepoint(["a", "b", "d", "x", "y"])
    slots, _, evicted = st.acquire(["a", "b", "d", "x", "y"], now=500.0, partitions=np.array([0] * 5))
    assert evicted == ["c"]  # the cap of 4 pushed c out
    st.write(slots[:2], np.full((2, S), 9, np.float32), np.array([10, 11]))
    st.free(slots[2:4])  # d and x end
    st.expire(now=1000.0, ttl=1.0)  # everything else idles out
    assert len(st) == 0
    st.rollback(sp)

    assert _snapshot(st) == _snapshot(reference)
    got, want = st.take_changes(), reference.take_changes()
    assert sorted(got.updated) == sorted(want.updated) and sorted(got.freed) == sorted(want.freed)
    assert sorted(want.freed) == [("d", 0)] and ("a", 0) in want.updated


def test_a_savepoint_that_is_released_keeps_everything():
    st = store()
    sp = st.savepoint(["a"])
    st.acquire(["a"], now=1.0)
    st.release_savepoint()
    assert "a" in st and sp.created == {"a"}
    st.free_ids(["a"])  # no journaling after release
    assert sp.released == {}

"""The step engine: parity with offline runs, per-stream ordering, duplicates, gaps, end, reset, TTL, cap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamer import schema
from streamer.engine import Engine, EngineConfig, run
from streamer.metrics import Metrics
from streamer.schema import Events
from streamer.transports.testing import TestingSource, TestingSink
from tests.streamer_helpers import event, lstm_step_model

F = 3
TOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return lstm_step_model(F, (6, 4), 2, seed=3)


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(model, clock=None, **config):
    metrics = Metrics(CollectorRegistry())
    engine = Engine(model, EngineConfig(**config), metrics=metrics, clock=clock or Clock())
    return engine, metrics


def feed(engine, messages, batch_size=1000):
    sink = TestingSink()
    run(engine, TestingSource(messages, batch_size=batch_size).polls(), sink)
    return sink


def value(metrics, name, **labels):
    v = metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def preds_of(records, sid):
    out = {}
    for r in records:
        if r["stream_id"] != sid:
            continue
        rows = r["predictions"] if "predictions" in r else [r["prediction"]]
        for j, p in enumerate(rows):
            assert r["step"] + j not in out, "a step was predicted twice"
            out[r["step"] + j] = p
    return out


def interleaved(rng, sequences, chunk_prob=0.2, with_steps=True):
    """Messages in random order across streams, in order within each, some chunks."""
    pieces = {}
    for sid, x in sequences.items():
        t, items = 0, []
        while t < len(x):
            k = int(rng.integers(2, 6)) if rng.random() < chunk_prob else 1
            k = min(k, len(x) - t)
            feats = x[t:t + k].tolist() if k > 1 else x[t].tolist()
            obj = {"stream_id": sid, "features": feats}
            if with_steps:
                obj["step"] = t
            items.append(json.dumps(obj).encode())
            t += k
        pieces[sid] = items
    order = np.concatenate([[sid] * len(v) for sid, v in pieces.items()])
    rng.shuffle(order)
    cursor = {sid: 0 for sid in pieces}
    out = []
    for sid in order:
        out.append(pieces[sid][cursor[sid]])
        cursor[sid] += 1
    return out


@pytest.mark.parametrize("batch_size,with_steps", [(1, True), (7, True), (64, False), (100000, True)])
def test_interleaved_streams_match_offline_runs(model, batch_size, with_steps):
    rng = np.random.default_rng(batch_size)
    seqs = {f"s{i}": rng.random((int(rng.integers(1, 40)), F), dtype=np.float32) for i in range(25)}
    engine, metrics = make(model)
    sink = feed(engine, interleaved(rng, seqs, with_steps=with_steps), batch_size)
    assert sink.dead_letters == []
    for sid, x in seqs.items():
        got = preds_of(sink.records, sid)
        assert sorted(got) == list(range(len(x)))
        expected, _ = model.run(x)
        np.testing.assert_allclose(np.array([got[t] for t in range(len(x))]), expected, atol=TOL, rtol=0)
    total = sum(len(x) for x in seqs.values())
    assert value(metrics, "streamer_predictions_total") == total
    assert value(metrics, "streamer_steps_total", outcome="applied") == total
    assert value(metrics, "streamer_active_streams") == 25


def test_steps_of_one_poll_run_in_waves_of_all_streams(model):
    engine, metrics = make(model)
    msgs = [event(sid, np.full(F, t / 10), step=t) for t in range(4) for sid in "abc"]
    feed(engine, msgs)
    assert value(metrics, "streamer_wave_size_streams_count") == 4
    assert value(metrics, "streamer_wave_size_streams_sum") == 12


def test_records_and_json_lines_agree(model):
    engine, _ = make(model)
    msgs = [event("a", [[1, 2, 3], [4, 5, 6]], step=0, ts=123), event("b", [1, 2, 3]),
            event("a", [0, 0, 1], ts=1.5)]
    poll = next(TestingSource(msgs).polls())
    outputs = engine.process(poll).outputs
    outputs.predictions[0, 0] = np.float32(0.1)  # a value whose float32 and float64 texts differ
    records = list(outputs.records())
    texts = [json.loads(line) for line in outputs.json_lines()]

    def as_float32(recs):  # JSON carries the shortest text of each float32; records() the float32 value
        return [{k: np.float32(v).tolist() if k.startswith("prediction") else v for k, v in r.items()}
                for r in recs]

    assert as_float32(texts) == as_float32(records)
    assert [list(t) for t in texts] == [list(r) for r in records]
    assert records[0]["stream_id"] == "a" and records[0]["step"] == 0 and len(records[0]["predictions"]) == 2
    assert records[0]["ts"] == 123 and records[0]["model"] == model.version
    assert records[1] == {"stream_id": "b", "step": 0, "prediction": records[1]["prediction"],
                          "model": model.version}
    assert records[2]["step"] == 2 and records[2]["ts"] == 1.5
    assert list(records[0]) == ["stream_id", "step", "predictions", "model", "ts"]


def test_duplicates_are_skipped_counted_and_leave_state_alone(model):
    x = np.random.default_rng(0).random((6, F), dtype=np.float32)
    engine, metrics = make(model)
    msgs = [event("a", x[t], step=t) for t in range(4)]
    msgs += [event("a", x[1], step=1), event("a", x[3], step=3)]  # redelivered
    msgs += [event("a", x[4], step=4), event("a", x[5], step=5)]
    sink = feed(engine, msgs, batch_size=3)
    got = preds_of(sink.records, "a")
    assert sorted(got) == list(range(6))
    np.testing.assert_allclose(np.array([got[t] for t in range(6)]), model.run(x)[0], atol=TOL)
    assert value(metrics, "streamer_events_total", outcome="duplicate") == 2
    assert value(metrics, "streamer_steps_total", outcome="duplicate") == 2
    assert sink.dead_letters == []


def test_partially_duplicate_chunk_skips_the_applied_prefix(model):
    x = np.random.default_rng(1).random((6, F), dtype=np.float32)
    engine, metrics = make(model)
    msgs = [event("a", x[0:3], step=0), event("a", x[1:5], step=1), event("a", x[5], step=5)]
    sink = feed(engine, msgs, batch_size=1)
    assert [(r["step"], len(r.get("predictions", [0]))) for r in sink.records] == [(0, 3), (3, 2), (5, 1)]
    got = preds_of(sink.records, "a")
    np.testing.assert_allclose(np.array([got[t] for t in range(6)]), model.run(x)[0], atol=TOL)
    assert value(metrics, "streamer_steps_total", outcome="duplicate") == 2
    assert value(metrics, "streamer_events_total", outcome="applied") == 3


def test_events_without_step_append_and_records_carry_the_step(model):
    x = np.random.default_rng(2).random((5, F), dtype=np.float32)
    engine, _ = make(model)
    msgs = [event("a", x[0]), event("a", x[1:3]), event("a", x[3], step=3), event("a", x[4])]
    sink = feed(engine, msgs, batch_size=2)
    assert [r["step"] for r in sink.records] == [0, 1, 3, 4]
    got = preds_of(sink.records, "a")
    np.testing.assert_allclose(np.array([got[t] for t in range(5)]), model.run(x)[0], atol=TOL)


def test_gap_policy_apply_is_the_default_and_counts(model):
    x = np.random.default_rng(3).random((4, F), dtype=np.float32)
    engine, metrics = make(model)
    sink = feed(engine, [event("a", x[0], step=0), event("a", x[1], step=5), event("a", x[2])], 1)
    assert [r["step"] for r in sink.records] == [0, 5, 6]
    expected, _ = model.run(x[:3])  # the gap is applied on the current state
    np.testing.assert_allclose([r["prediction"] for r in sink.records], expected, atol=TOL)
    assert value(metrics, "streamer_step_gaps_total") == 1
    assert sink.dead_letters == []


def test_gap_policy_reject_dead_letters_and_keeps_state(model):
    x = np.random.default_rng(4).random((4, F), dtype=np.float32)
    engine, metrics = make(model, on_gap="reject")
    msgs = [event("a", x[0], step=0), event("a", x[2:4], step=2), event("b", x[0], step=3),
            event("a", x[1], step=1), event("a", x[2:4], step=2)]
    sink = feed(engine, msgs, batch_size=2)
    assert [(d["error"], d["source"]) for d in sink.dead_letters] == [("step_gap", {"index": 1}),
                                                                       ("step_gap", {"index": 2})]
    assert "next step 1" in sink.dead_letters[0]["detail"]
    got = preds_of(sink.records, "a")
    np.testing.assert_allclose(np.array([got[t] for t in range(4)]), model.run(x)[0], atol=TOL)
    assert "b" not in {r["stream_id"] for r in sink.records}
    assert value(metrics, "streamer_events_total", outcome="rejected") == 2
    assert value(metrics, "streamer_dead_letters_total", reason="step_gap") == 2


def test_gap_policy_reset_starts_over_at_the_gap(model):
    x = np.random.default_rng(5).random((4, F), dtype=np.float32)
    engine, metrics = make(model, on_gap="reset")
    sink = feed(engine, [event("a", x[0], step=0), event("a", x[1], step=1), event("a", x[2:4], step=9)], 1)
    assert [r["step"] for r in sink.records] == [0, 1, 9]
    np.testing.assert_allclose(sink.records[2]["predictions"], model.run(x[2:4])[0], atol=TOL)
    assert value(metrics, "streamer_step_gaps_total") == 1


def test_end_frees_the_state_and_the_id_starts_over(model):
    x = np.random.default_rng(6).random((6, F), dtype=np.float32)
    for batch_size in (1, 100):  # the restart in a later poll, and within the same poll
        engine, metrics = make(model)
        msgs = [event("a", x[0], step=0), event("a", x[1:3], step=1, end=True),
                event("a", x[3], step=0), event("a", x[4], step=1)]
        sink = feed(engine, msgs, batch_size)
        assert [r["step"] for r in sink.records] == [0, 1, 0, 1]
        np.testing.assert_allclose(sink.records[1]["predictions"], model.run(x[:3])[0][1:], atol=TOL)
        np.testing.assert_allclose([sink.records[2]["prediction"], sink.records[3]["prediction"]],
                                   model.run(x[3:5])[0], atol=TOL)
        assert value(metrics, "streamer_step_gaps_total") == 0
        expected_ended = 1 if batch_size == 1 else 0  # in one poll, "a" goes on after its end
        assert value(metrics, "streamer_streams_freed_total", reason="end") == expected_ended
        assert value(metrics, "streamer_active_streams") == 1
    engine, metrics = make(model)
    feed(engine, [event("a", x[0], end=True)])
    assert len(engine.store) == 0 and value(metrics, "streamer_streams_freed_total", reason="end") == 1
    assert engine.store.take_changes().freed == [("a", -1)]


def test_duplicate_or_rejected_end_does_not_free(model):
    x = np.random.default_rng(7).random((3, F), dtype=np.float32)
    engine, _ = make(model, on_gap="reject")
    feed(engine, [event("a", x[0], step=0), event("a", x[1], step=1),
                  event("a", x[0], step=0, end=True), event("a", x[2], step=5, end=True)])
    assert "a" in engine.store and engine.store.last_step[engine.store.slot_of("a")] == 1


def test_reset_drops_state_and_restarts_the_step_counter(model):
    x = np.random.default_rng(8).random((6, F), dtype=np.float32)
    engine, metrics = make(model)
    msgs = [event("a", x[0], step=0), event("a", x[1], step=1), event("a", x[2], step=2),
            event("a", x[3], step=0, reset=True), event("a", x[4], step=1),
            event("a", x[5], reset=True)]
    sink = feed(engine, msgs, batch_size=4)
    assert [r["step"] for r in sink.records] == [0, 1, 2, 0, 1, 0]
    np.testing.assert_allclose([r["prediction"] for r in sink.records[3:5]], model.run(x[3:5])[0], atol=TOL)
    np.testing.assert_allclose(sink.records[5]["prediction"], model.run(x[5:6])[0][0], atol=TOL)
    assert value(metrics, "streamer_stream_resets_total") == 2
    assert value(metrics, "streamer_steps_total", outcome="duplicate") == 0
    sink = feed(engine, [event("a", x[0], step=40, reset=True), event("a", x[1])])
    assert [r["step"] for r in sink.records] == [40, 41]


def test_idle_streams_expire_after_the_ttl(model):
    x = np.random.default_rng(9).random((3, F), dtype=np.float32)
    clock = Clock(1000.0)
    engine, metrics = make(model, clock=clock, ttl=30.0)
    feed(engine, [event("a", x[0], step=0), event("b", x[0], step=0)])
    clock.t = 1020.0
    feed(engine, [event("b", x[1], step=1)])
    clock.t = 1040.0  # a idle for 40 s > 30 s; b for 20 s
    sink = feed(engine, [event("a", x[1], step=1), event("b", x[2], step=2)])
    assert value(metrics, "streamer_streams_freed_total", reason="expired") == 1
    # a lost its state: step 1 now arrives at a fresh stream (a gap, applied by default)
    np.testing.assert_allclose(sink.records[0]["prediction"], model.run(x[1:2])[0][0], atol=TOL)
    np.testing.assert_allclose(sink.records[1]["prediction"], model.run(x)[0][2], atol=TOL)
    assert value(metrics, "streamer_step_gaps_total") == 1


def test_stream_cap_evicts_the_least_recently_used(model):
    x = np.random.default_rng(10).random((3, F), dtype=np.float32)
    engine, metrics = make(model, max_streams=2)
    feed(engine, [event("a", x[0], step=0)])
    feed(engine, [event("b", x[0], step=0)])
    feed(engine, [event("a", x[1], step=1)])
    sink = feed(engine, [event("c", x[0], step=0), event("a", x[2], step=2)])
    assert sorted(engine.store.stream_ids()) == ["a", "c"]
    assert value(metrics, "streamer_streams_freed_total", reason="evicted") == 1
    np.testing.assert_allclose(sink.records[1]["prediction"], model.run(x)[0][2], atol=TOL)
    assert value(metrics, "streamer_active_streams") == 2


def test_stream_cap_refuses_what_one_poll_cannot_fit(model):
    engine, metrics = make(model, max_streams=2)
    sink = feed(engine, [event(s, [1, 2, 3], step=0) for s in "abc"])
    assert [r["stream_id"] for r in sink.records] == ["a", "b"]
    assert [(d["error"], d["source"]) for d in sink.dead_letters] == [("stream_limit", {"index": 2})]
    assert value(metrics, "streamer_events_total", outcome="refused") == 1


def test_bad_input_is_dead_lettered_and_never_touches_other_streams(model):
    x = np.random.default_rng(11).random((4, F), dtype=np.float32)
    bad = [b"\xff\xfe", b"{", b"[]", json.dumps({"features": [1, 2, 3]}).encode(),
           event("a", [1, 2]), event("a", [1, float("nan"), 3]), event("a", x[1], step=-1),
           event("a", [[1, 2, 3], [1, 2]]), event("a", x[1], reset="no"), b"z" * 5000]
    msgs = [event("a", x[0], step=0)] + bad + [event("a", x[t], step=t) for t in range(1, 4)]
    engine, metrics = make(model, max_message_bytes=4096)
    sink = feed(engine, msgs, batch_size=4)
    assert len(sink.dead_letters) == len(bad)
    assert [d["source"]["index"] for d in sink.dead_letters] == list(range(1, len(bad) + 1))
    got = preds_of(sink.records, "a")
    np.testing.assert_allclose(np.array([got[t] for t in range(4)]), model.run(x)[0], atol=TOL)
    assert value(metrics, "streamer_events_total", outcome="invalid") == len(bad)
    assert sum(value(metrics, "streamer_dead_letters_total", reason=c) for c in schema.ERROR_CODES) == len(bad)


def test_partitions_tag_streams_and_can_be_dropped(model):
    engine, metrics = make(model)
    msgs = [event(s, [1, 2, 3]) for s in "abcd"]
    sink = TestingSink()
    run(engine, TestingSource(msgs, partitions=[0, 1, 0, 1]).polls(), sink)
    assert sorted(engine.drop_partition(1)) == ["b", "d"]
    assert sorted(engine.store.stream_ids()) == ["a", "c"]
    assert value(metrics, "streamer_streams_freed_total", reason="dropped") == 2


def test_event_time_lag_is_observed(model):
    clock = Clock(2000.0)
    engine, metrics = make(model, clock=clock)
    feed(engine, [event("a", [1, 2, 3], ts=1_999_500), event("b", [1, 2, 3])])
    assert value(metrics, "streamer_event_lag_seconds_count") == 1
    assert value(metrics, "streamer_event_lag_seconds_sum") == pytest.approx(0.5)


def test_apply_takes_decoded_events_directly(model):
    x = np.random.default_rng(12).random((3, F), dtype=np.float32)
    engine, _ = make(model)
    for t in range(3):
        outputs, rejected = engine.apply(Events.from_arrays(["a", "b"], np.stack([x[t], x[t]])))
        assert rejected == [] and outputs.row_steps.tolist() == [t, t]
    np.testing.assert_allclose(outputs.predictions, np.stack([model.run(x)[0][2]] * 2), atol=TOL)


def test_fuzzed_messages_never_crash_nor_touch_a_clean_stream(model):
    """Random byte flips, truncations and odd field values around a clean stream."""
    rng = np.random.default_rng(13)
    x = rng.random((60, F), dtype=np.float32)
    odd_values = [None, True, -1, 2**64, 1.5, "x", "", [], [[]], {}, [1, 2, 3], [[1, 2, 3]], float("nan"),
                  1e308, "é" * 300, [[1, 2, 3], [1, 2]], [True, 1, 2]]
    msgs = []
    for t in range(60):
        msgs.append(event("clean", x[t], step=t))
        for _ in range(3):
            obj = {"stream_id": f"m-{rng.integers(5)}", "step": int(rng.integers(0, 5)),
                   "features": rng.random(F).tolist()}
            kind = rng.integers(3)
            if kind == 0:
                key = ["stream_id", "step", "features", "reset", "end", "ts"][rng.integers(6)]
                obj[key] = odd_values[rng.integers(len(odd_values))]
                raw = json.dumps(obj).encode()
            else:
                raw = bytearray(json.dumps(obj).encode())
                if kind == 1:
                    for _ in range(int(rng.integers(1, 4))):
                        raw[rng.integers(len(raw))] = int(rng.integers(256))
                else:
                    raw = raw[: rng.integers(len(raw))]
                raw = bytes(raw)
            msgs.append(raw)
    for policy in ("apply", "reject", "reset"):
        engine, metrics = make(model, on_gap=policy, max_streams=8)
        sink = feed(engine, msgs, batch_size=int(rng.integers(1, 50)))
        got = preds_of(sink.records, "clean")
        assert sorted(got) == list(range(60))
        np.testing.assert_allclose(np.array([got[t] for t in range(60)]), model.run(x)[0], atol=TOL)
        for d in sink.dead_letters:
            assert d["error"] in schema.ERROR_CODES
            json.dumps(d)
        assert value(metrics, "streamer_events_total", outcome="invalid") + \
            value(metrics, "streamer_events_total", outcome="rejected") + \
            value(metrics, "streamer_events_total", outcome="refused") == len(sink.dead_letters)


def test_a_stream_resumes_from_its_checkpoint_in_another_engine(model):
    from streamer.state import StateMismatch, StreamRecord

    x = np.random.default_rng(14).random((8, F), dtype=np.float32)
    first, _ = make(model)
    feed(first, [event("a", x[t], step=t) for t in range(5)], batch_size=2)
    changes = first.store.take_changes()
    assert changes.updated == [("a", -1)]
    blob = first.store.export("a").to_bytes()
    second, metrics = make(model)
    second.restore(StreamRecord.from_bytes(blob))
    assert value(metrics, "streamer_active_streams") == 1
    sink = feed(second, [event("a", x[4], step=4)] + [event("a", x[t], step=t) for t in range(5, 8)])
    assert [r["step"] for r in sink.records] == [5, 6, 7]  # step 4 was already applied before the checkpoint
    np.testing.assert_allclose([r["prediction"] for r in sink.records], model.run(x)[0][5:], atol=TOL)
    other, _ = make(lstm_step_model(F, (6, 4), 2, seed=99))
    with pytest.raises(StateMismatch):
        other.restore(StreamRecord.from_bytes(blob))


def test_large_waves_are_stepped_in_blocks_with_the_same_results(model):
    rng = np.random.default_rng(15)
    seqs = {f"s{i}": rng.random((int(rng.integers(1, 12)), F), dtype=np.float32) for i in range(30)}
    msgs = interleaved(rng, seqs, chunk_prob=0.3)
    results = []
    for block in (4, 512):
        engine, _ = make(model)
        engine.step_block = block
        results.append(feed(engine, msgs, batch_size=200).records)
    assert [(r["stream_id"], r["step"]) for r in results[0]] == [(r["stream_id"], r["step"]) for r in results[1]]
    for sid, x in seqs.items():
        got = preds_of(results[0], sid)
        np.testing.assert_allclose(np.array([got[t] for t in range(len(x))]), model.run(x)[0], atol=TOL)


class StepOnly:
    """The model with `step` alone: the engine then steps every poll wave by wave (`Engine._apply_waves`)."""

    def __init__(self, model):
        self.model = model
        for name in ("feature_size", "output_size", "state_size", "version"):
            setattr(self, name, getattr(model, name))

    def initial_state(self, n):
        return self.model.initial_state(n)

    def step(self, x, state):
        return self.model.step(x, state)


class Ragged(StepOnly):
    """The model with `run_ragged` too, counting its calls."""

    calls = 0

    def run_ragged(self, xs, lengths, state):
        self.calls += 1
        return self.model.run_ragged(xs, lengths, state)


@pytest.mark.parametrize("batch_size", [5, 60, 1000])
def test_sequences_of_a_poll_give_what_waves_give(model, batch_size):
    """A poll with several rows per stream goes through `model.run_ragged` when every row follows its stream's
    previous one, else wave by wave; either way the records, dead letters, metrics and states are the same as
    stepping wave by wave throughout (duplicates, gaps, resets and ends mixed in)."""
    rng = np.random.default_rng(batch_size)
    seqs = {f"s{i}": rng.random((int(rng.integers(1, 40)), F), dtype=np.float32) for i in range(6)}
    msgs = interleaved(rng, seqs, chunk_prob=0.4)
    messy = msgs[-20:] + [event("s1", [1, 2, 3], step=50), event("s2", [1, 2, 3], reset=True),
                          event("s3", [3, 2, 1], end=True), event("s4", [[1, 2, 3], [3, 2, 1]]), event("s4", [0, 1, 0]),
                          event("s0", [1, 1, 1], step=0)]  # replayed events (duplicates), a gap, reset, end...
    runs = []
    ragged = Ragged(model)
    for m in (ragged, StepOnly(model)):
        engine, metrics = make(m)
        sink = feed(engine, msgs, batch_size)
        more = feed(engine, messy, batch_size)
        sink.records += more.records
        sink.dead_letters += more.dead_letters
        runs.append((sink, metrics, engine.store))
    (a, ma, sa), (b, mb, sb) = runs
    assert ragged.calls > 0
    assert [(r["stream_id"], r["step"], len(r.get("predictions", [0]))) for r in a.records] == \
        [(r["stream_id"], r["step"], len(r.get("predictions", [0]))) for r in b.records]
    for ra, rb in zip(a.records, b.records):
        np.testing.assert_allclose(ra.get("predictions", ra.get("prediction")),
                                   rb.get("predictions", rb.get("prediction")), atol=1e-6)
    assert a.dead_letters == b.dead_letters
    for name, labels in [("streamer_steps_total", {"outcome": "applied"}), ("streamer_steps_total", {"outcome": "duplicate"}),
                         ("streamer_events_total", {"outcome": "applied"}), ("streamer_gaps_total", {}),
                         ("streamer_wave_size_streams_count", {}), ("streamer_wave_size_streams_sum", {})]:
        assert value(ma, name, **labels) == value(mb, name, **labels), name
    assert sorted(sa.stream_ids()) == sorted(sb.stream_ids())
    for sid in sa.stream_ids():
        ea, eb = sa.export(sid), sb.export(sid)
        assert ea.last_step == eb.last_step
        np.testing.assert_allclose(ea.state, eb.state, atol=1e-6)


def test_json_lines_exact_text_for_odd_ids_versions_and_values():
    """The encoder's exact output: ids and model version JSON-escaped (a '%' stays a '%'), float32
    shortest texts, null for non-finite values, ts only where given, chunks as lists of rows."""
    from streamer.engine import Outputs

    preds = np.array([[0.1, np.inf], [1e-5, -2.5], [np.nan, 3.0], [123456.0, 0.0]], np.float32)
    out = Outputs("v%s\u00e9", ['a"\\%d', "\u00fc", "c"], np.array([7, 0, 9]), [None, 1.5, 2**53],
                  np.array([False, True, False]), np.array([0, 1, 3]), np.array([1, 2, 1]), preds,
                  np.array([7, 0, 1, 9]))
    assert out.json_lines() == [
        '{"stream_id":"a\\"\\\\%d","step":7,"prediction":[0.1, null],"model":"v%s\\u00e9"}',
        '{"stream_id":"\\u00fc","step":0,"predictions":[[1e-05, -2.5], [null, 3.0]],"model":"v%s\\u00e9",'
        '"ts":1.5}',
        '{"stream_id":"c","step":9,"prediction":[123456.0, 0.0],"model":"v%s\\u00e9","ts":9007199254740992}',
    ]
    single = Outputs("m", ["a", "b"], np.array([1, 2]), [None, None], np.zeros(2, bool), np.arange(2),
                     np.ones(2, np.int64), np.array([[0.5], [np.nan]], np.float32), np.array([1, 2]))
    assert single.json_lines() == ['{"stream_id":"a","step":1,"prediction":[0.5],"model":"m"}',
                                   '{"stream_id":"b","step":2,"prediction":[null],"model":"m"}']


def test_the_orjson_row_text_is_numpys_text(monkeypatch):
    """Rows of float32 written by orjson (its fast path) are the very texts numpy's path writes: around the
    range's edges, across it, with zeros, negative values and one or several columns."""
    pytest.importorskip("orjson")
    from streamer import engine

    rng = np.random.default_rng(7)
    low, high = engine._ORJSON_TEXT_RANGE
    edges = np.array([low, high, 0.5, 1.0, 0.0, -0.0], np.float32)
    edges = np.concatenate([edges, np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(0))])
    values = np.concatenate([edges, np.exp(rng.uniform(np.log(low), np.log(high), 200_000)).astype(np.float32),
                             rng.random(100_000).astype(np.float32), -rng.random(1000).astype(np.float32)])
    for cols in (1, 2, 5):
        preds = values[: len(values) // cols * cols].reshape(-1, cols)
        fast = engine._row_texts(preds)
        monkeypatch.setattr(engine, "_orjson", None)
        assert fast == engine._row_texts(preds)
        monkeypatch.undo()


def test_records_of_equal_chunks_are_written_at_once_with_numpys_text(monkeypatch):
    """A poll of chunks of one length gets its prediction texts from one orjson call over (records, k, O):
    the very lines the row-by-row path writes (numpy's text), for one or several outputs, one-step chunks,
    values orjson would write differently (then numpy writes them), ts or not, and records split to fit."""
    pytest.importorskip("orjson")
    from streamer import engine
    from streamer.engine import Outputs

    rng = np.random.default_rng(11)
    cases = []
    for n, k, o in [(1, 1, 1), (3, 1, 2), (5, 10, 2), (40, 7, 1), (8, 3, 5)]:
        preds = rng.random((n * k, o)).astype(np.float32)
        ts = [None] * n if o != 2 else [int(t) for t in rng.integers(0, 2**40, n)]
        out = Outputs("m%", [f"s{i}\u00e9" for i in range(n)], np.arange(n) * 100, ts, np.ones(n, bool),
                      np.arange(0, n * k, k), np.full(n, k, np.int64), preds, np.arange(n * k))
        cases.append(out)
    odd = cases[2].predictions.copy()
    odd[3, 1] = 1e-5  # numpy writes 1e-05, orjson 1e-5: the whole poll goes through numpy
    cases.append(Outputs("m", cases[2].stream_ids, cases[2].steps, cases[2].ts, cases[2].chunk, cases[2].start,
                         cases[2].length, odd, cases[2].row_steps))
    cases.append(cases[3].split(3))  # records cut to fit: not one (records, k, O) array any more
    for out in cases:
        fast = out.json_lines()
        monkeypatch.setattr(engine, "_orjson", None)
        slow = out.json_lines()
        monkeypatch.undo()
        assert fast == slow
        assert [json.loads(line)["predictions"] for line in fast] == \
            [r["predictions"] for r in map(json.loads, slow)]
    assert "1e-05" in cases[5].json_lines()[0]

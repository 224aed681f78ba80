"""The engine against messages that break things: an exception while handling one message costs that
message one internal_error dead letter and nothing else (state rolled back, the rest applied exactly once);
message keys checked against stream ids; split streams counted; prediction records split to fit, or
refused before any state change; dead letters cut to fit. Broker-free (the same through Kafka is in
test_serve_hostile.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamer import limits, schema
from streamer.engine import Engine, EngineConfig
from streamer.metrics import Metrics
from streamer.transports import Poll
from tests.streamer_helpers import event, lstm_step_model

F = 3
TOL = 1e-5
POISON = 666.0


class FaultyModel:
    """A real StepModel whose step raises on one feature value: an injected fault, as a model bug would be."""

    def __init__(self, model, poison: float = POISON):
        self.model, self.poison = model, poison
        self.feature_size, self.output_size = model.feature_size, model.output_size
        self.state_size, self.version = model.state_size, model.version
        self.calls = 0

    def initial_state(self, n):
        return self.model.initial_state(n)

    def step(self, x, state):
        self.calls += 1
        if (x == self.poison).any():
            raise FloatingPointError(f"the model cannot take {self.poison}")
        return self.model.step(x, state)


@pytest.fixture(scope="module")
def model():
    return lstm_step_model(F, (6,), 2, seed=4)


def make(model, **config):
    metrics = Metrics(CollectorRegistry())
    return Engine(model, EngineConfig(**config), metrics=metrics, clock=lambda: 1000.0), metrics


def value(metrics, name, **labels):
    v = metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def poll_of(messages, keys=None, partitions=None) -> Poll:
    return Poll(messages=messages, source=lambda i: {"index": i}, keys=keys,
                partitions=None if partitions is None else np.asarray(partitions, np.int64))


def predictions(outputs) -> dict[tuple[str, int], list]:
    out = {}
    for r in outputs.records():
        rows = r["predictions"] if "predictions" in r else [r["prediction"]]
        for j, p in enumerate(rows):
            assert (r["stream_id"], r["step"] + j) not in out, "a step was predicted twice"
            out[(r["stream_id"], r["step"] + j)] = p
    return out


def test_an_exception_in_one_message_costs_one_internal_error_and_nothing_else(model):
    rng = np.random.default_rng(0)
    seqs = {f"s{i}": rng.random((6, F), dtype=np.float32) for i in range(8)}
    msgs = [event(sid, x[t], step=t) for t in range(6) for sid, x in seqs.items()]
    culprit = event("s3", [1.0, POISON, 2.0], step=6)  # after s3's 6 steps: the next one
    msgs.insert(30, culprit)
    engine, metrics = make(FaultyModel(model))
    result = engine.process(poll_of(msgs))

    assert [d["error"] for d in result.dead_letters] == [schema.INTERNAL_ERROR]
    dl = result.dead_letters[0]
    assert "FloatingPointError" in dl["detail"] and "666" in dl["detail"] and dl["source"] == {"index": 30}
    assert schema.payload_bytes(dl) == culprit and result.dead_letter_index == [30]
    got = predictions(result.outputs)  # every other event exactly once, equal to the offline run
    assert set(got) == {(sid, t) for sid in seqs for t in range(6)}
    for sid, x in seqs.items():
        np.testing.assert_allclose([got[(sid, t)] for t in range(6)], model.run(x)[0], atol=TOL, rtol=0)
    for sid, x in seqs.items():  # the state is each stream's state after its 6 steps, nothing half-applied
        assert engine.store.export(sid).last_step == 5
        np.testing.assert_allclose(engine.store.export(sid).state, model.run(x)[1], atol=1e-6)
    assert value(metrics, "streamer_dead_letters_total", reason="internal_error") == 1
    assert value(metrics, "streamer_events_total", outcome="failed") == 1
    assert value(metrics, "streamer_events_total", outcome="applied") == 48
    # the stream goes on from where it was: step 6 again, without the poison
    nxt = rng.random(F, dtype=np.float32)
    more = engine.process(poll_of([event("s3", nxt, step=6)]))
    want = model.run(np.vstack([seqs["s3"], nxt]))[0][6]
    np.testing.assert_allclose(predictions(more.outputs)[("s3", 6)], want, atol=TOL, rtol=0)


def test_a_poll_of_only_bad_messages_and_a_chunk_with_a_poisoned_row(model):
    engine, metrics = make(FaultyModel(model))
    good = event("g", [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], step=0)
    bad = event("b", [[0.1, 0.2, 0.3], [0.4, POISON, 0.6]], step=0)  # the first row would apply, the second raises
    result = engine.process(poll_of([bad, good, bad]))
    assert [d["error"] for d in result.dead_letters] == [schema.INTERNAL_ERROR] * 2
    assert "b" not in engine.store  # the new stream of the failed chunk was rolled back entirely
    assert set(predictions(result.outputs)) == {("g", 0), ("g", 1)}
    assert engine.store.export("g").last_step == 1


def test_a_decoder_fault_costs_one_message(model, monkeypatch):
    """A bug in the bulk decoder (injected) falls back to decoding message by message, same result."""
    msgs = [event(f"s{i}", [i, 1, 2], step=0) for i in range(20)]
    engine, _ = make(model)
    want = engine.process(poll_of(msgs))

    def broken(*args, **kwargs):
        raise KeyError("injected")

    monkeypatch.setattr(schema, "_decode_bulk", broken)
    engine2, _ = make(model)
    got = engine2.process(poll_of(msgs))
    assert got.dead_letters == want.dead_letters == []
    assert predictions(got.outputs) == predictions(want.outputs)


def test_key_mismatches_are_counted_and_rejected_when_asked(model):
    msgs = [event("a", [1, 2, 3], step=0), event("b", [1, 2, 3], step=0), event("c", [1, 2, 3], step=0)]
    keys = [b"a", None, b"other"]
    engine, metrics = make(model)
    result = engine.process(poll_of(msgs, keys))
    assert result.dead_letters == [] and len(result.outputs) == 3
    assert value(metrics, "streamer_key_mismatch_total", kind="missing") == 1
    assert value(metrics, "streamer_key_mismatch_total", kind="different") == 1

    engine, metrics = make(model, on_key_mismatch="reject")
    result = engine.process(poll_of(msgs, keys))
    assert [d["error"] for d in result.dead_letters] == [schema.KEY_MISMATCH] * 2
    assert "has no key" in result.dead_letters[0]["detail"] and "b'other'" in result.dead_letters[1]["detail"]
    assert result.outputs.stream_ids == ["a"] and "b" not in engine.store and "c" not in engine.store
    assert value(metrics, "streamer_events_total", outcome="rejected") == 2


def test_a_stream_seen_on_two_partitions_is_counted_and_logged(model, caplog):
    engine, metrics = make(model)
    engine.process(poll_of([event("a", [1, 2, 3], step=0), event("b", [1, 2, 3], step=0)], partitions=[1, 2]))
    with caplog.at_level("ERROR", logger="streamer.routing"):
        engine.process(poll_of([event("a", [1, 2, 3], step=1), event("b", [1, 2, 3], step=1)], partitions=[3, 2]))
    assert value(metrics, "streamer_split_streams_total") == 1
    assert "'a' is split across partitions 1 and 3" in caplog.text
    # a new stream whose first two events come from two partitions in one poll
    engine.process(poll_of([event("n", [1, 2, 3], step=1), event("n", [1, 2, 3], step=0)], partitions=[2, 0]))
    assert value(metrics, "streamer_split_streams_total") == 2


def test_chunk_predictions_are_split_into_records_that_fit(model):
    rng = np.random.default_rng(3)
    x = rng.random((500, F), dtype=np.float32)
    limit = 8000  # bytes per record, overhead and key included
    engine, _ = make(model, max_output_record_bytes=limit)
    result = engine.process(poll_of([event("long", x, step=0), event("short", x[:3], step=0)]))
    lines = result.outputs.json_lines()
    assert len(lines) > 3
    for line, sid in zip(lines, result.outputs.stream_ids):
        assert len(line) + len(sid) + limits.RECORD_OVERHEAD <= limit
    got = predictions(result.outputs)
    np.testing.assert_allclose([got[("long", t)] for t in range(500)], model.run(x)[0], atol=TOL, rtol=0)
    steps = [json.loads(line)["step"] for line in lines if json.loads(line)["stream_id"] == "long"]
    assert steps[0] == 0 and steps == sorted(steps)


def test_an_event_whose_prediction_cannot_fit_is_refused_before_any_state_change(model):
    long_id = "\U0001F600" * 256
    engine, metrics = make(model, max_output_record_bytes=3000)
    result = engine.process(poll_of([event(long_id, [1, 2, 3], step=0), event("a", [[1, 2, 3]] * 40, step=0)]))
    assert [d["error"] for d in result.dead_letters] == [schema.OUTPUT_TOO_LARGE]
    assert long_id not in engine.store and engine.store.export("a").last_step == 39
    assert value(metrics, "streamer_events_total", outcome="refused") == 1
    assert sorted(predictions(result.outputs)) == [("a", t) for t in range(40)]


def test_dead_letters_are_cut_to_fit_their_topic(model):
    engine, _ = make(model, max_dead_letter_record_bytes=20_000)
    big = b'{"stream_id": "' + b'"' * 30_000 + b'"}'
    key = b"k" * 2000  # longer than any stream id: the dead letter goes unkeyed
    result = engine.process(poll_of([big, big], keys=[b"x", key]))
    for dl, k in zip(result.dead_letters, [b"x", None]):
        assert limits.dead_letter_key(k) == k
        size = len(schema.encode_dead_letter(dl)) + (len(k) if k else 0) + limits.RECORD_OVERHEAD
        assert size <= 20_000 and dl["payload_truncated"] and dl["payload_bytes"] == len(big)

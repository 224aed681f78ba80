"""`streamer demo`: the arrivals it generates, and the whole run on a cached and on a freshly trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.data import synthetic_sequences
from streamer.cli import main
from streamer.commands.demo import arrivals


def test_arrivals_interleave_streams_in_order_with_chunks_and_ends():
    records = synthetic_sequences(20, 5, 40, seed=1)
    messages, chunks = arrivals(records, np.random.default_rng(0), chunk_prob=0.3, ts_ms=123)
    events = [json.loads(m) for m in messages]
    assert chunks == sum(isinstance(e["features"][0], list) for e in events) > 0
    seen = {}
    for e in events:
        k = len(e["features"]) if isinstance(e["features"][0], list) else 1
        assert e["step"] == seen.get(e["stream_id"], 0), "in order within a stream"
        seen[e["stream_id"]] = e["step"] + k
        assert e["ts"] == 123
    assert seen == {f"demo-{r.id}": len(r) for r in records}
    ends = [e["stream_id"] for e in events if e.get("end")]
    assert sorted(ends) == sorted(seen)
    firsts = [e["stream_id"] for e in events[:20]]
    assert len(set(firsts)) > 5, "streams are interleaved, not one after another"


def _tiny_keras_model(path):
    keras = pytest.importorskip("keras")
    inputs = keras.Input((None, 5))
    h = keras.layers.LSTM(4, return_sequences=True)(inputs)
    outputs = keras.layers.Dense(2, activation="sigmoid")(h)
    keras.Model(inputs, outputs).save(path)


def test_demo_on_a_cached_model(tmp_path, capsys):
    _tiny_keras_model(tmp_path / "model.keras")
    rc = main(["demo", "--model-dir", str(tmp_path), "--streams", "15", "--min-len", "3", "--max-len", "40",
               "--poll-size", "16", "--metrics-port", "0", "--chunk-prob", "0.3"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "reusing the trained model" in err
    assert "15 concurrent streams" in out and "0 dead letters" in out
    assert "parity" in out and "OK" in out and "accuracy" in out and "steps/s" in out and "p99" in out
    assert (tmp_path / "step" / "step_model.json").is_file()


@pytest.mark.slow
def test_demo_trains_when_nothing_is_cached(tmp_path, capsys):
    rc = main(["demo", "--model-dir", str(tmp_path / "m"), "--epochs", "1", "--train-sequences", "64",
               "--streams", "8", "--max-len", "30", "--no-metrics"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "training the default synthetic model" in err
    assert (tmp_path / "m" / "model.keras").is_file() and (tmp_path / "m" / "manifest.json").is_file()
    assert "OK (tolerance" in out

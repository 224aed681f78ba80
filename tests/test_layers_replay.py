"""Token events and many-to-one models through the CLI, each step in a fresh process: a script saves a
Keras model file, `streamer convert` converts it, `streamer replay` streams JSONL events (single ids,
chunks of ids, bad ids) through it, and every prediction equals the Keras model on the stream's events so
far; every bad event is one `invalid_features` dead letter naming its line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
V = 40

# Saves a token sequence classifier (Embedding(mask_zero) -> LayerNormalization -> causal Conv1D -> GRU
# -> softmax, many-to-one) with random weights; run as its own process, like a user's training script.
SAVE_SCRIPT = """
import sys
import numpy as np
import keras
L = keras.layers
keras.utils.set_random_seed(11)
model = keras.Sequential([
    keras.Input((None,), dtype="int32"),
    L.Embedding(%d, 8, mask_zero=True),
    L.LayerNormalization(),
    L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu"),
    L.GRU(6),
    L.Dense(3, activation="softmax"),
], name="token_classifier")
rng = np.random.default_rng(11)
for w in model.weights:
    w.assign((rng.normal(size=tuple(w.shape)) * 0.6).astype("float32"))
model.save(sys.argv[1])
""" % V


def run_cli(*args, timeout=180):
    proc = subprocess.run([sys.executable, "-m", "streamer", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    keras_file = d / "classifier.keras"
    subprocess.run([sys.executable, "-c", SAVE_SCRIPT, str(keras_file)], check=True, cwd=ROOT, timeout=120,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    run_cli("convert", str(keras_file), "--out", str(d / "step"))
    return keras_file, d / "step"


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_token_events_replay_equal_the_keras_model_on_each_prefix(tmp_path, converted):
    keras_file, step_dir = converted
    spec = json.loads((step_dir / "step_model.json").read_text())
    assert (spec["input_kind"], spec["vocab_size"], spec["many_to_one"], spec["feature_size"]) == \
        ("tokens", V, True, 1)
    rng = np.random.default_rng(0)
    seqs = {f"doc-{i}": rng.integers(0, V, size=int(rng.integers(1, 14))).tolist() for i in range(6)}
    pieces = {}
    for sid, ids in seqs.items():  # one id per event, or a chunk of ids
        t, items = 0, []
        while t < len(ids):
            k = min(int(rng.integers(1, 4)), len(ids) - t)
            items.append(json.dumps({"stream_id": sid, "step": t, "features": ids[t] if k == 1 else ids[t:t + k]}))
            t += k
        pieces[sid] = items
    order = [sid for sid, items in pieces.items() for _ in items]
    rng.shuffle(order)  # streams interleaved, each stream's events in order
    cursor = dict.fromkeys(pieces, 0)
    lines = []
    for sid in order:
        lines.append(pieces[sid][cursor[sid]])
        cursor[sid] += 1
    bad = ['{"stream_id": "doc-0", "features": 3.0}', '{"stream_id": "doc-0", "features": -1}',
           '{"stream_id": "doc-0", "features": %d}' % V, '{"stream_id": "doc-0", "features": true}',
           '{"stream_id": "doc-0", "features": [[1], [2]]}', '{"stream_id": "doc-0", "features": [1, 2.5]}']
    for pos, text in zip((1, 4, 6, 9, 10, 12), bad):
        lines.insert(pos, text)
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    out, dlq = tmp_path / "out.jsonl", tmp_path / "dlq.jsonl"
    run_cli("replay", "--model", str(step_dir), "--input", str(events), "--output", str(out), "--dlq", str(dlq))

    dead = read_jsonl(dlq)
    assert [d["error"] for d in dead] == ["invalid_features"] * len(bad)
    assert [d["source"]["line"] for d in dead] == [p + 1 for p in (1, 4, 6, 9, 10, 12)]
    got: dict[str, dict[int, list]] = {}
    for r in read_jsonl(out):
        rows = r["predictions"] if "predictions" in r else [r["prediction"]]
        for j, p in enumerate(rows):
            got.setdefault(r["stream_id"], {})[r["step"] + j] = p
    model = keras.saving.load_model(keras_file, safe_mode=True)
    for sid, ids in seqs.items():
        assert sorted(got[sid]) == list(range(len(ids)))
        x = np.array(ids, dtype=np.int32)[None]
        want = np.stack([np.asarray(model(x[:, :t + 1]))[0] for t in range(len(ids))])
        streamed = np.array([got[sid][t] for t in range(len(ids))], dtype=np.float32)
        assert np.max(np.abs(streamed - want)) <= TOL, sid
        np.testing.assert_allclose(streamed.sum(axis=1), 1.0, atol=1e-6)  # class probabilities, per event

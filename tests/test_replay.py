"""`streamer replay`: JSONL in, predictions out, equal to offline runs; dead letters with line numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.cli import main
from tests.streamer_helpers import lstm_step_model

F = 3
TOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def step_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("stepmodel")
    lstm_step_model(F, (5,), 2, seed=7).save(d)
    return d


def interleaved_lines(rng, seqs, chunk_prob=0.25):
    pieces = {}
    for sid, x in seqs.items():
        t, items = 0, []
        while t < len(x):
            k = min(int(rng.integers(2, 5)) if rng.random() < chunk_prob else 1, len(x) - t)
            feats = x[t:t + k].tolist() if k > 1 else x[t].tolist()
            items.append(json.dumps({"stream_id": sid, "step": t, "features": feats, "ts": 1_700_000_000_000 + t}))
            t += k
        pieces[sid] = items
    order = np.concatenate([[sid] * len(v) for sid, v in pieces.items()])
    rng.shuffle(order)
    cursor = dict.fromkeys(pieces, 0)
    lines = []
    for sid in order:
        lines.append(pieces[sid][cursor[sid]])
        cursor[sid] += 1
    return lines


def collect(records):
    out: dict[str, dict[int, list]] = {}
    for r in records:
        rows = r["predictions"] if "predictions" in r else [r["prediction"]]
        for j, p in enumerate(rows):
            out.setdefault(r["stream_id"], {})[r["step"] + j] = p
    return out


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_replay_equals_offline_runs_and_dead_letters_name_their_lines(tmp_path, step_dir, capsys):
    from models.stepmodel import StepModel

    model = StepModel.load(step_dir)
    rng = np.random.default_rng(0)
    seqs = {f"user-{i}": rng.random((int(rng.integers(1, 30)), F), dtype=np.float32) for i in range(40)}
    lines = interleaved_lines(rng, seqs)
    bad = ['{"stream_id": "user-1", "features": [1, 2]}', "not json", "",
           '{"stream_id": "", "features": [1, 2, 3]}']
    positions = [3, 50, 51, 200]
    for pos, text in zip(positions, bad):
        lines.insert(pos, text)
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    out, dlq = tmp_path / "preds.jsonl", tmp_path / "dlq.jsonl"
    rc = main(["replay", "--model", str(step_dir), "--input", str(events), "--output", str(out),
               "--dlq", str(dlq), "--batch-lines", "17"])
    assert rc == 0
    got = collect(read_jsonl(out))
    for sid, x in seqs.items():
        expected, _ = model.run(x)
        assert sorted(got[sid]) == list(range(len(x)))
        np.testing.assert_allclose(np.array([got[sid][t] for t in range(len(x))]), expected, atol=TOL, rtol=0)
    dead = read_jsonl(dlq)
    # the blank line is skipped, not a dead letter; line numbers are 1-based
    assert [(d["error"], d["source"]["line"]) for d in dead] == [
        ("wrong_feature_count", 4), ("invalid_json", 51), ("invalid_stream_id", 201)]
    assert dead[1]["payload"] == "not json" and dead[0]["source"]["file"] == str(events)
    records = read_jsonl(out)
    assert all(r["model"] == model.version and r["ts"] >= 1_700_000_000_000 for r in records)
    err = capsys.readouterr().err
    assert "3 dead letters" in err and "wrong_feature_count 1" in err


def test_replay_stdin_to_stdout_without_tensorflow(step_dir):
    lines = [json.dumps({"stream_id": "a", "features": [0.1, 0.2, 0.3]}),
             json.dumps({"stream_id": "a", "features": [[0.1, 0.2, 0.3], [0, 0, 1]], "end": True}),
             "\xff broken"]
    code = ("import sys; from streamer.cli import main; rc = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "replay", "--model", str(step_dir), "--batch-lines", "2"],
                          input=("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"),
                          capture_output=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr.decode()
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [(r["stream_id"], r["step"], "predictions" in r) for r in records] == [("a", 0, False), ("a", 1, True)]
    assert "1 dead letters" in proc.stderr.decode() and "--dlq" in proc.stderr.decode()


def test_replay_invalid_utf8_line_is_a_base64_dead_letter(tmp_path, step_dir):
    events = tmp_path / "e.jsonl"
    events.write_bytes(b'{"stream_id": "a", "features": [1, 2, 3]}\n{"stream_id": "\xff"}\r\n')
    out, dlq = tmp_path / "p.jsonl", tmp_path / "d.jsonl"
    assert main(["replay", "--model", str(step_dir), "--input", str(events), "--output", str(out),
                 "--dlq", str(dlq), "--quiet"]) == 0
    (dead,) = read_jsonl(dlq)
    assert dead["error"] == "invalid_utf8" and dead["payload_encoding"] == "base64"
    import base64

    assert base64.b64decode(dead["payload"]) == b'{"stream_id": "\xff"}'
    assert len(read_jsonl(out)) == 1


def test_replay_oversized_line_is_refused_without_reading_it_whole(tmp_path, step_dir):
    events = tmp_path / "e.jsonl"
    big = '{"stream_id": "a", "pad": "' + "x" * 5000 + '", "features": [1, 2, 3]}'
    events.write_text(big + "\n" + '{"stream_id": "a", "features": [1, 2, 3]}\n')
    out, dlq = tmp_path / "p.jsonl", tmp_path / "d.jsonl"
    assert main(["replay", "--model", str(step_dir), "--input", str(events), "--output", str(out),
                 "--dlq", str(dlq), "--max-message-bytes", "1000", "--quiet"]) == 0
    (dead,) = read_jsonl(dlq)
    assert dead["error"] == "message_too_large" and dead["source"]["line"] == 1
    assert [r["step"] for r in read_jsonl(out)] == [0]


def test_replay_gap_policy_and_cap_flags(tmp_path, step_dir):
    events = tmp_path / "e.jsonl"
    events.write_text("\n".join(json.dumps({"stream_id": s, "step": t, "features": [1, 2, 3]})
                                for s, t in [("a", 0), ("a", 3), ("b", 0), ("c", 0)]) + "\n")
    out, dlq = tmp_path / "p.jsonl", tmp_path / "d.jsonl"
    assert main(["replay", "--model", str(step_dir), "--input", str(events), "--output", str(out),
                 "--dlq", str(dlq), "--on-gap", "reject", "--max-streams", "2", "--batch-lines", "1",
                 "--quiet"]) == 0
    assert [d["error"] for d in read_jsonl(dlq)] == ["step_gap"]
    assert [r["stream_id"] for r in read_jsonl(out)] == ["a", "b", "c"]  # c evicted a (LRU)


@pytest.mark.parametrize("argv,message", [
    (["--batch-lines", "0"], "--batch-lines"),
    (["--ttl", "-3"], "--ttl"),
    (["--max-streams", "0"], "--max-streams"),
    (["--metrics-port", "70000"], "--metrics-port"),
])
def test_replay_bad_flags_are_one_line_and_exit_2(step_dir, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--model", str(step_dir), "--input", os.devnull] + argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,message", [
    (["--input", "/nonexistent/events.jsonl"], "cannot read /nonexistent/events.jsonl"),
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
])
def test_replay_user_errors_are_one_line_and_exit_2(step_dir, tmp_path, capsys, argv, message):
    rc = main(["replay", "--model", str(step_dir), "--input", os.devnull,
               "--output", str(tmp_path / "o.jsonl")] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_replay_keras_model_small_case_matches_keras(tmp_path):
    """The .keras file path (converted on the fly) against the Keras model's own eager output."""
    keras = pytest.importorskip("keras")
    inputs = keras.Input((None, F))
    h = keras.layers.LSTM(6, return_sequences=True)(inputs)
    outputs = keras.layers.Dense(2, activation="sigmoid")(h)
    kmodel = keras.Model(inputs, outputs)
    path = tmp_path / "small.keras"
    kmodel.save(path)
    rng = np.random.default_rng(5)
    seqs = {f"k{i}": rng.random((int(rng.integers(3, 12)), F), dtype=np.float32) for i in range(6)}
    events = tmp_path / "e.jsonl"
    events.write_text("\n".join(interleaved_lines(rng, seqs)) + "\n")
    out = tmp_path / "p.jsonl"
    assert main(["replay", "--model", str(path), "--input", str(events), "--output", str(out), "--quiet"]) == 0
    got = collect(read_jsonl(out))
    for sid, x in seqs.items():
        expected = np.asarray(kmodel(x[None]))[0]
        np.testing.assert_allclose(np.array([got[sid][t] for t in range(len(x))]), expected, atol=TOL, rtol=0)

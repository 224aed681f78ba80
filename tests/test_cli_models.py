"""`streamer train` and `streamer predict`: end to end, and one-line errors (exit 2, no traceback)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from streamer.cli import main
from tests.helpers_models import write_lines

pytest.importorskip("keras")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seq_line(n, seed, with_targets=True, **extra):
    from models.data import qa_targets

    x = np.random.default_rng(seed).random((n, 5)).round(4)
    d = {"features": x.tolist(), **extra}
    if with_targets:
        d["targets"] = qa_targets(x).tolist()
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained through the CLI from a JSONL file (module-scoped: trained once)."""
    d = tmp_path_factory.mktemp("cli")
    data = write_lines(d / "train.jsonl", [seq_line(n, i) for i, n in enumerate([5, 12, 3, 20, 8, 15] * 3)])
    rc = main(["train", "--data", str(data), "--out", str(d / "run"), "--epochs", "1", "--units", "4,3",
               "--batch-size", "4", "--verbose", "0", "--validation", str(data)])
    assert rc == 0
    return d / "run"


def test_train_from_jsonl_writes_model_and_manifest(trained, capsys):
    manifest = json.loads((trained / "manifest.json").read_text())
    assert (trained / "model.keras").is_file()
    assert manifest["data"]["source"] == "jsonl"
    assert manifest["lengths"] == {"count": 18, "min": 3, "max": 20, "mean": 10.5, "steps": 189}
    assert [l.get("units") for l in manifest["layers"][1:]] == [4, 3, 2]
    assert "eval_accuracy_validation" in manifest


def test_predict_file_to_file_one_line_per_sequence(trained, tmp_path, capsys):
    lines = [seq_line(4, 1, id="a"), seq_line(1, 2, with_targets=False), "", seq_line(30, 3, id=17)]
    inp = write_lines(tmp_path / "seqs.jsonl", lines)
    out = tmp_path / "preds.jsonl"
    assert main(["predict", "--model", str(trained), "--input", str(inp), "--output", str(out)]) == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", 1, 17]  # default id: 0-based line index
    assert [len(r["predictions"]) for r in rows] == [4, 1, 30]  # exactly one row per real step
    assert all(len(step) == 2 for r in rows for step in r["predictions"])
    # the same numbers as the library call
    from models.predict import load_keras_model, predict_sequences

    model = load_keras_model(trained)
    expected = predict_sequences(model, [np.asarray(l["features"], np.float32) for l in lines if l])
    for r, e in zip(rows, expected):
        np.testing.assert_allclose(np.asarray(r["predictions"]), e, atol=1e-6)
    assert "predicted 3 sequences (35 steps)" in capsys.readouterr().err


def test_predict_stdin_to_stdout_reports_accuracy(trained, monkeypatch, capsys):
    text = "\n".join(json.dumps(seq_line(n, n)) for n in (6, 2, 9)) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert main(["predict", "--model", str(trained / "model.keras"), "--input", "-", "--output", "-"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(l) for l in captured.out.splitlines()]
    assert [(r["id"], len(r["predictions"])) for r in rows] == [(0, 6), (1, 2), (2, 9)]
    assert "per-step accuracy" in captured.err


def test_train_synthetic_small(tmp_path, capsys):
    out = tmp_path / "syn"
    rc = main(["train", "--synthetic", "--out", str(out), "--sequences", "24", "--epochs", "1", "--units", "3",
               "--min-len", "4", "--max-len", "9", "--eval-sequences", "3", "--eval-max-len", "40",
               "--verbose", "0", "--cell", "gru", "--seed", "3"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["source"] == "synthetic" and manifest["training"]["cell"] == "gru"
    assert 4 <= manifest["lengths"]["min"] <= manifest["lengths"]["max"] <= 9
    assert "eval_accuracy_len_10_40" in manifest
    assert f"version {manifest['version']}" in capsys.readouterr().out


# --------------------------------------------------------------------------- errors: exit 2, one line


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("streamer")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_predict_missing_model(tmp_path, capsys):
    inp = write_lines(tmp_path / "seqs.jsonl", [seq_line(3, 0)])
    rc = main(["predict", "--model", str(tmp_path / "nope"), "--input", str(inp), "--output", "-"])
    assert rc == 2
    assert "no such file or directory" in one_error_line(capsys)


def test_predict_missing_input(trained, tmp_path, capsys):
    rc = main(["predict", "--model", str(trained), "--input", str(tmp_path / "x.jsonl"), "--output", "-"])
    assert rc == 2
    assert "--input" in one_error_line(capsys)


def test_predict_bad_line_names_it_and_writes_nothing(trained, tmp_path, capsys):
    inp = write_lines(tmp_path / "seqs.jsonl", [seq_line(3, 0), '{"features": [[1, 2, "x", 4, 5]]}'])
    out = tmp_path / "preds.jsonl"
    rc = main(["predict", "--model", str(trained), "--input", str(inp), "--output", str(out)])
    assert rc == 2
    assert "seqs.jsonl line 2: " in one_error_line(capsys)
    assert not out.exists()


def test_predict_wrong_feature_size(trained, tmp_path, capsys):
    inp = write_lines(tmp_path / "seqs.jsonl", [{"features": [[0.1, 0.2, 0.3]]}])
    rc = main(["predict", "--model", str(trained), "--input", str(inp), "--output", "-"])
    assert rc == 2
    assert "3 features per step but the model expects 5" in one_error_line(capsys)


def test_train_errors(tmp_path, capsys):
    bad = write_lines(tmp_path / "data.jsonl", [seq_line(3, 0), seq_line(3, 1), '{"features": [[0, 0, 0, 0, 0]]}'])
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "data.jsonl line 3: missing \"targets\"" in one_error_line(capsys)
    assert main(["train", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in one_error_line(capsys)
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "o"), "--sequences", "5"]) == 2
    assert "--sequences only apply to --synthetic" in one_error_line(capsys)
    assert main(["train", "--synthetic", "--out", str(tmp_path / "o"), "--units", "8,x"]) == 2
    assert "units" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_errors_from_a_real_process_have_no_traceback(tmp_path):
    """The installed entry point: bad line and missing model give one line on stderr and exit 2."""
    inp = write_lines(tmp_path / "seqs.jsonl", ["{oops"])
    for argv, expected in [
        (["--model", str(tmp_path), "--input", str(inp), "--output", "-"], "no model.keras"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "streamer", "predict", *argv], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr
    import zipfile

    with zipfile.ZipFile(tmp_path / "model.keras", "w") as z:  # a .keras archive, so the input is read next
        z.writestr("config.json", "{}")
    proc = subprocess.run([sys.executable, "-m", "streamer", "predict", "--model", str(tmp_path), "--input",
                           str(inp), "--output", "-"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("streamer: error: seqs.jsonl line 1: not valid JSON") and proc.stderr.count("\n") == 1

"""The model zoo through the CLI: models saved by another process, loaded in a fresh one.

`tests/zoo_build.py` builds every entry of `tests/zoo_models.py` in its own process (Keras 3, and real
tf.keras / Keras 2 files when `tf_keras` is installed) and writes the files plus reference outputs of
an eager Keras call. Then, for each entry, in separate `python -m streamer` processes (a few at a time):
  convert FILE --out DIR    -> exit 0, or exit 2 with one line matching the entry's refusal
  replay --model DIR        -> interleaved events (some in chunks) of 12 streams of lengths 1..150;
                               every step's prediction within 1e-5 of the reference (many-to-one: of
                               the model on that prefix); no dead letters
  predict --model FILE      -> the same sequences, within 1e-5 (one row per sequence for many-to-one),
                               or exit 2 with one line for models that cannot even be loaded
The fixture only builds and runs the entries of the tests selected in this session (`-k name` is cheap).
ZOO_WORKERS sets the number of CLI processes run at once (default: CPU count, at most 4); ZOO_REPORT=FILE
writes each entry's command times as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.zoo_models import BY_NAME, ENTRIES, Entry

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5
HAVE_TF_KERAS = importlib.util.find_spec("tf_keras") is not None


def _params(entries):
    out = []
    for e in entries:
        marks = []
        if e.keras2 and not HAVE_TF_KERAS:
            marks.append(pytest.mark.skip(reason="tf_keras (Keras 2) is not installed: pip install -e '.[test]'"))
        out.append(pytest.param(e.name, marks=marks, id=e.name))
    return out


# ----------------------------------------------------------------------------- running the CLI

def _cli(*args: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "streamer", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
            "seconds": round(time.perf_counter() - t0, 2)}


def _load_refs(out: Path, entry: Entry) -> tuple[list[np.ndarray], list[np.ndarray]]:
    with np.load(out / f"{entry.name}.npz") as z:
        n = len([k for k in z.files if k.startswith("x")])
        return [z[f"x{i}"] for i in range(n)], [z[f"y{i}"] for i in range(n)]


def _features(entry: Entry, rows: np.ndarray):
    if entry.tokens:
        return int(rows[0]) if len(rows) == 1 else [int(v) for v in rows]
    return rows[0].tolist() if len(rows) == 1 else rows.tolist()


def write_events(path: Path, entry: Entry, xs: list[np.ndarray], seed: int = 0) -> None:
    """Events of all streams interleaved at random (each stream in order); every 4th stream sends chunks."""
    rng = np.random.default_rng(seed)
    pieces: list[list[tuple[int, int]]] = []
    for i, x in enumerate(xs):
        cuts, t = [], 0
        while t < len(x):
            k = int(rng.integers(1, 6)) if i % 4 == 0 else 1
            cuts.append((t, min(t + k, len(x))))
            t += k
        pieces.append(cuts)
    order = np.concatenate([[i] * len(p) for i, p in enumerate(pieces)])
    rng.shuffle(order)
    nxt = [0] * len(xs)
    with open(path, "w", encoding="utf-8") as f:
        for i in order:
            a, b = pieces[i][nxt[i]]
            nxt[i] += 1
            f.write(json.dumps({"stream_id": f"s{i}", "step": a, "features": _features(entry, xs[i][a:b])}) + "\n")


def write_sequences(path: Path, entry: Entry, xs: list[np.ndarray]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, x in enumerate(xs):
            feats = [int(v) for v in x] if entry.tokens else x.tolist()
            f.write(json.dumps({"id": f"s{i}", "features": feats}) + "\n")


def run_entry(entry: Entry, out: Path) -> dict:
    path = out / entry.file
    step_dir = out / f"{entry.name}.step"
    runs = {"convert": _cli("convert", str(path), "--out", str(step_dir))}
    has_refs = (out / f"{entry.name}.npz").is_file()
    if entry.streams and runs["convert"]["rc"] == 0 and has_refs:
        xs, _ = _load_refs(out, entry)
        write_events(out / f"{entry.name}.events.jsonl", entry, xs)
        runs["replay"] = _cli("replay", "--model", str(step_dir), "--input", str(out / f"{entry.name}.events.jsonl"),
                              "--output", str(out / f"{entry.name}.replayed.jsonl"),
                              "--dlq", str(out / f"{entry.name}.dlq.jsonl"))
    if entry.predict == "parity" and has_refs:
        xs, _ = _load_refs(out, entry)
    else:  # a refusal: any well-formed input will do
        rng = np.random.default_rng(1)
        xs = [rng.integers(1, entry.features, n) if entry.tokens else rng.normal(size=(n, entry.features))
              for n in (3, 6)]
    write_sequences(out / f"{entry.name}.seqs.jsonl", entry, xs)
    runs["predict"] = _cli("predict", "--model", str(path), "--input", str(out / f"{entry.name}.seqs.jsonl"),
                           "--output", str(out / f"{entry.name}.predicted.jsonl"))
    return runs


def _selected_entries(request) -> list[Entry]:
    names = set()
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if spec is not None and item.module.__name__ == __name__ and "name" in spec.params:
            names.add(spec.params["name"])
    return [e for e in ENTRIES if e.name in names]


def _build(out: Path, entries: list[Entry]) -> dict:
    procs = []
    for keras2 in (False, True):
        names = [e.name for e in entries if e.keras2 == keras2]
        if names and (HAVE_TF_KERAS or not keras2):
            cmd = [sys.executable, str(ROOT / "tests" / "zoo_build.py"), *(["--keras2"] if keras2 else []),
                   str(out), *names]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    index = {}
    for f in out.glob("index-*.json"):
        index.update({r["name"]: r for r in json.loads(f.read_text())})
    index["_log"] = "\n".join(log[-3000:] for log in logs)
    return index


@pytest.fixture(scope="session")
def zoo(request, tmp_path_factory):
    entries = _selected_entries(request)
    out = tmp_path_factory.mktemp("zoo")
    index = _build(out, entries)
    runnable = [e for e in entries if e.name in index and "error" not in index[e.name]]
    workers = int(os.environ.get("ZOO_WORKERS", min(4, os.cpu_count() or 2)))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        runs = dict(zip([e.name for e in runnable], pool.map(lambda e: run_entry(e, out), runnable)))
    if os.environ.get("ZOO_REPORT"):
        times = {n: {"build": index[n].get("seconds"), **{c: r["seconds"] for c, r in rs.items()}}
                 for n, rs in runs.items()}
        Path(os.environ["ZOO_REPORT"]).write_text(json.dumps(times, indent=1))
    return {"dir": out, "index": index, "runs": runs}


def _runs(zoo, name: str) -> dict:
    info = zoo["index"].get(name)
    if info is None:
        pytest.fail(f"the zoo builder did not build {name}:\n{zoo['index']['_log']}")
    if "error" in info:
        pytest.fail(f"the zoo builder failed on {name}:\n{info['error']}")
    return zoo["runs"][name]


def _cli_lines(run: dict) -> list[str]:
    # every stderr line counts: the CLI itself keeps TensorFlow's native start-up lines off stderr
    return [line for line in run["stderr"].splitlines() if line.strip()]


def assert_refused(run: dict, pattern: str) -> None:
    lines = _cli_lines(run)
    assert run["rc"] == 2, run["stderr"][-3000:]
    assert "Traceback" not in run["stderr"], run["stderr"][-3000:]
    assert len(lines) == 1 and lines[0].startswith("streamer: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]


def assert_ok(run: dict, what: str) -> None:
    assert run["rc"] == 0, f"{what} failed:\n{run['stderr'][-3000:]}"


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", _params(ENTRIES))
def test_zoo_convert(zoo, name):
    """convert converts (or refuses with one line, exit 2, no traceback)."""
    entry = BY_NAME[name]
    run = _runs(zoo, name)["convert"]
    info = zoo["index"][name]
    if "sanity" in info:  # the builder's free twin agrees with the fixed-shape/stateful model itself
        assert info["sanity"] <= TOL, info
    if entry.refuse:
        assert_refused(run, entry.refuse)
        return
    assert_ok(run, "convert")
    manifest = json.loads((zoo["dir"] / f"{name}.step" / "manifest.json").read_text())
    assert manifest.get("many_to_one", False) == entry.many_to_one
    assert manifest.get("input_kind", "float") == ("tokens" if entry.tokens else "float")


@pytest.mark.parametrize("name", _params(e for e in ENTRIES if e.streams))
def test_zoo_replay_parity(zoo, name):
    """Interleaved events of 12 streams (lengths 1..150) replayed: every step equals Keras on that prefix."""
    entry = BY_NAME[name]
    runs = _runs(zoo, name)
    assert_ok(runs["convert"], "convert")
    assert "replay" in runs, "replay did not run"
    assert_ok(runs["replay"], "replay")
    out = zoo["dir"]
    assert (out / f"{name}.dlq.jsonl").read_text() == ""
    _, ys = _load_refs(out, entry)
    got = [dict() for _ in ys]
    for line in (out / f"{name}.replayed.jsonl").read_text().splitlines():
        rec = json.loads(line)
        i = int(rec["stream_id"][1:])
        rows = rec["predictions"] if "predictions" in rec else [rec["prediction"]]
        for j, row in enumerate(rows):
            got[i][rec["step"] + j] = row
    worst = 0.0
    for i, y in enumerate(ys):
        assert sorted(got[i]) == list(range(len(y))), f"stream s{i}: steps {sorted(got[i])[:5]}..."
        pred = np.array([got[i][t] for t in range(len(y))], dtype=np.float32)
        worst = max(worst, float(np.max(np.abs(pred - y))))
    assert worst <= TOL, f"replay differs from Keras by {worst:.3g}"


@pytest.mark.parametrize("name", _params(e for e in ENTRIES if e.predict))
def test_zoo_predict(zoo, name):
    """predict on mixed lengths equals Keras on each whole sequence (or refuses with one line)."""
    entry = BY_NAME[name]
    run = _runs(zoo, name)["predict"]
    if entry.predict != "parity":
        assert_refused(run, entry.predict)
        return
    assert_ok(run, "predict")
    _, ys = _load_refs(zoo["dir"], entry)
    lines = (zoo["dir"] / f"{name}.predicted.jsonl").read_text().splitlines()
    assert len(lines) == len(ys)
    worst = 0.0
    for i, (line, y) in enumerate(zip(lines, ys)):
        rec = json.loads(line)
        assert rec["id"] == f"s{i}"
        if entry.many_to_one:
            assert set(rec) == {"id", "prediction"}
            pred, want = np.array(rec["prediction"], np.float32), y[-1]
        else:
            pred, want = np.array(rec["predictions"], np.float32), y
        assert pred.shape == want.shape, (pred.shape, want.shape)
        worst = max(worst, float(np.max(np.abs(pred - want))))
    assert worst <= TOL, f"predict differs from Keras by {worst:.3g}"

"""Build the model zoo (`tests/zoo_models.py`) into a directory, as a user's own script would.

    python tests/zoo_build.py OUTDIR [NAME ...]            # the Keras 3 entries (all, or those named)
    python tests/zoo_build.py --keras2 OUTDIR [NAME ...]   # the tf.keras (Keras 2) entries (needs tf_keras)

For every entry: build the model, give it random weights (input kernels scaled so the states move,
recurrent kernels contractive so float32 rounding cannot diverge), save it in the entry's format, and
write OUTDIR/NAME.npz with the input sequences (x0..x11) and the reference outputs (y0..y11) of an eager
Keras call in this process: on each whole sequence for a per-step model, on every prefix for a
many-to-one model. Models that cannot be called on other shapes (fixed batch or length, stateful) get
their references from the same architecture built free, with the same weights, after checking that the
two agree on the model's own shape. OUTDIR/index-keras3.json (or -keras2) lists what was built, the
sanity errors and any failure. This script imports nothing from the project: it is the user's side.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from zoo_models import ENTRIES, LENGTHS, Entry  # noqa: E402


def _leaf(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


def randomize(model, rng) -> None:
    """Random weights that make every state move without letting the recurrences blow up."""
    for v in model.weights:
        shape, name = tuple(v.shape), _leaf(v)
        if name == "recurrent_kernel":
            value = rng.normal(0.0, 0.5 / np.sqrt(shape[0]), shape)  # spectral radius ~0.5 per gate block
        elif name in ("kernel", "embeddings"):
            value = rng.normal(0.0, 1.5 / np.sqrt(max(int(np.prod(shape[:-1])), 1)), shape)
        elif name in ("bias", "beta"):
            value = rng.normal(0.0, 0.1, shape)
        elif name == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "moving_mean":
            value = rng.normal(0.0, 0.3, shape)
        elif name == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        else:
            continue  # Normalization's mean/variance/count: set by the constructor
        v.assign(value.astype(np.float32))


def sequences(entry: Entry, rng) -> list[np.ndarray]:
    xs = []
    for i, n in enumerate(LENGTHS):
        if entry.tokens:
            x = rng.integers(1, entry.features, n).astype(np.int64)
            if entry.masked:
                x[rng.random(n) < 0.1] = 0
                if i == 3:
                    x[0] = 0
        else:
            x = rng.normal(0.0, 1.0, (n, entry.features)).astype(np.float32)
            if entry.masked:
                x[rng.random(n) < 0.1] = 0.0
                if i == 3:
                    x[0] = 0.0
        xs.append(x)
    return xs


def _call(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False), dtype=np.float32)


def references(model, xs: list[np.ndarray], many_to_one: bool) -> list[np.ndarray]:
    """Keras outputs: per step (T, O), an eager call on each whole sequence; many-to-one (T, O), row t =
    model(x[:t+1]): one call per prefix length (all sequences that long at once) through tf.function
    (eager calls of 150 prefixes take minutes), tied to the eager whole-sequence call at the last row."""
    whole = [_call(model, x[None])[0] for x in xs]
    if not many_to_one:
        return whole
    import tensorflow as tf

    spec = tf.TensorSpec((None, None) + tuple(model.inputs[0].shape[2:]), model.inputs[0].dtype)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    out = [np.zeros((len(x), whole[0].shape[-1]), np.float32) for x in xs]
    for t in range(max(len(x) for x in xs)):
        idx = [i for i, x in enumerate(xs) if len(x) > t]
        y = np.asarray(fn(np.stack([xs[i][: t + 1] for i in idx])), dtype=np.float32)
        for row, i in enumerate(idx):
            out[i][t] = y[row]
    for y, w in zip(out, whole):
        if np.max(np.abs(y[-1] - w)) > 1e-5:
            raise AssertionError(f"compiled and eager Keras differ by {np.max(np.abs(y[-1] - w)):.3g}")
    return out


def sanity(entry: Entry, model, twin, rng) -> float:
    """Max |model - twin| on the model's own shape (stateful models fed one step at a time)."""
    shape = tuple(model.inputs[0].shape)
    batch = shape[0] or 2
    length = shape[1] or 10
    steps = 12 if shape[1] == 1 else length
    x = rng.normal(0.0, 1.0, (batch, steps, entry.features)).astype(np.float32)
    if entry.masked and shape[1] != 1:
        # (Not for one-step stateful calls: there a masked step outputs zeros, as the first step of any
        # call does, not the previous output; on the whole sequence it repeats the previous output.)
        x[rng.random((batch, steps)) < 0.1] = 0.0
    want = _call(twin, x)
    if shape[1] == 1:  # stateful, one step per call, state carried by Keras
        got = np.concatenate([_call(model, x[:, t : t + 1]) for t in range(steps)], axis=1)
    else:
        got = _call(model, x)
    return float(np.max(np.abs(got - want)))


def save(entry: Entry, model, out: Path) -> None:
    path = out / entry.file
    if entry.fmt == "weights_h5":
        model.save_weights(str(path))
    elif entry.fmt == "savedmodel":
        model.save(str(path), save_format="tf")
    else:
        model.save(str(path))


def build_one(entry: Entry, k, out: Path) -> dict:
    rng = np.random.default_rng(zlib.crc32(entry.name.encode()))  # the same data in every run
    t0 = time.perf_counter()
    k.utils.set_random_seed(7)
    model = entry.build(k, False)
    randomize(model, rng)
    info: dict = {"name": entry.name}
    ref_model = model
    if entry.fixed:
        twin = entry.build(k, True)
        twin.set_weights(model.get_weights())
        info["sanity"] = sanity(entry, model, twin, rng)
        ref_model = twin
    save(entry, model, out)
    if entry.streams or entry.predict == "parity":
        xs = sequences(entry, rng)
        ys = references(ref_model, xs, entry.many_to_one)
        arrays = {f"x{i}": x for i, x in enumerate(xs)} | {f"y{i}": y for i, y in enumerate(ys)}
        np.savez(out / f"{entry.name}.npz", **arrays)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return info


def main(argv: list[str]) -> int:
    keras2 = "--keras2" in argv
    args = [a for a in argv if not a.startswith("--")]
    out, only = Path(args[0]), set(args[1:])
    out.mkdir(parents=True, exist_ok=True)
    if keras2:
        import tf_keras as k
    else:
        import keras as k
    results = []
    for entry in ENTRIES:
        if entry.keras2 != keras2 or (only and entry.name not in only):
            continue
        try:
            results.append(build_one(entry, k, out))
        except Exception:  # noqa: BLE001 - one broken entry must not hide the others
            results.append({"name": entry.name, "error": traceback.format_exc()[-2000:]})
    (out / f"index-{'keras2' if keras2 else 'keras3'}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""`streamer train` output: DIR/model.keras + DIR/manifest.json (what was trained, on what, how well).

The manifest's `version` is the same content hash `streamer convert`/`serve` report for the model
(`StepModel.version`: spec + weights), so a served stream's model version points back to its training
run; `weights_sha256` hashes the raw Keras weights as well.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np

from models.errors import ModelError

MANIFEST_FILE = "manifest.json"
KERAS_FILE = "model.keras"
FORMAT = "rnn-streamer training run"


def weights_hash(model) -> str:
    """sha256 (hex) over every weight's path, shape and float32 bytes, in model order."""
    h = hashlib.sha256()
    for var in model.weights:
        a = np.ascontiguousarray(np.asarray(var.numpy(), dtype=np.float32))
        h.update(f"|{var.path}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def model_version(model) -> tuple[str, str]:
    """(version, how): the StepModel content hash when the model converts, else 16 hex of the weights hash."""
    try:
        from models.convert import convert_model

        return convert_model(model, verify=False).version, "step_model"
    except (ModelError, ImportError):
        return weights_hash(model)[:16], "weights"


def describe_layers(model) -> list[dict]:
    """Name, type and the settings that matter for each layer (units, activation, mask value...)."""
    out = []
    for layer in model.layers:
        d = {"name": layer.name, "type": type(layer).__name__}
        inner = getattr(layer, "layer", None)  # TimeDistributed / Bidirectional
        if inner is not None:
            d["wraps"] = type(inner).__name__
        src = inner if inner is not None else layer
        for key in ("units", "activation", "recurrent_activation", "return_sequences", "mask_value"):
            value = getattr(src, key, None)
            if value is None:
                continue
            if callable(value):
                value = getattr(value, "__name__", str(value))
            d[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
        out.append(d)
    return out


def versions() -> dict:
    import keras
    import tensorflow as tf

    return {"keras": keras.__version__, "tensorflow": tf.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def build_manifest(model, **sections) -> dict:
    """The manifest dict: identity and shapes from `model`, the rest from `sections` (JSON-able)."""
    from models.architectures import mask_value_of, model_io_sizes

    feature_size, output_size = model_io_sizes(model)
    version, how = model_version(model)
    manifest = {
        "format": FORMAT,
        "model_file": KERAS_FILE,
        "version": version,
        "version_of": how,
        "weights_sha256": weights_hash(model),
        "feature_size": feature_size,
        "output_size": output_size,
        "mask_value": mask_value_of(model),
        "layers": describe_layers(model),
        "params": int(model.count_params()),
    }
    manifest.update(sections)
    manifest["versions"] = versions()
    manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return manifest


def save_run(model, manifest: dict, out_dir) -> Path:
    """Write DIR/model.keras and DIR/manifest.json (each via a temp file + rename). Returns DIR."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} exists and is not a directory; give a directory for the trained model")
    out.mkdir(parents=True, exist_ok=True)
    tmp_model = out / ("tmp-" + KERAS_FILE)  # Keras insists on the .keras suffix
    model.save(tmp_model)
    os.replace(tmp_model, out / KERAS_FILE)
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST_FILE)
    return out


def read_manifest(out_dir) -> dict:
    p = Path(out_dir) / MANIFEST_FILE
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{p}: no such file; expected a `streamer train --out` directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{p}: not a valid manifest ({exc})") from None

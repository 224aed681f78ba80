"""Keras model files: what a path holds, and loading it without running anyone's code.

`classify(path)` tells, from the bytes and not the file name, what the user points at:
  ("step", DIR)   a converted step model (DIR/step_model.json, from `streamer convert`),
  ("keras", FILE) a Keras 3 `.keras` archive (also DIR/model.keras, a `streamer train` output),
  ("h5", FILE)    a legacy HDF5 full-model file (what Keras 2 / tf.keras `model.save("x.h5")` writes).
TensorFlow SavedModel directories, weights-only files (`.weights.h5`, Keras 2 `save_weights`) and
tf.keras's own `.keras` archives are refused with one line saying what to export instead.

`load_keras_model(path)` reads the stored config first (plain JSON, nothing deserialised) and refuses
`Lambda` layers and custom classes, then loads with `safe_mode=True`: `.keras` through
`keras.saving.load_model`, `.h5` through Keras' own legacy HDF5 loader, after dropping the Keras 2
config keys that Keras 3 no longer accepts (`time_major=False`, which every Keras 2 RNN writes) and the
mask operation nodes that Keras 3 writes into Functional .h5 configs but cannot read back.
Everything wrong is a `ModelError` (one line; the CLI exits 2).
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

from models.errors import ConversionError, ModelError

KERAS_FILE = "model.keras"
SPEC_FILE = "step_model.json"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_KERAS_MODULES = ("keras", "keras.")
_LAMBDA = ("the model contains a Lambda layer (arbitrary Python code), which is refused: it cannot be "
           "loaded safely (safe_mode=True) nor converted; rebuild the model without Lambda")
_EXPORT = ("save the whole model from the code that built it: model.save('model.keras') (Keras 3) or "
           "model.save('model.h5') (Keras 2 / tf.keras)")


def _sniff(p: Path) -> str:
    """'zip', 'hdf5' or 'other', from the file's first bytes."""
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if head.startswith(b"PK"):
        return "zip"
    if head == _HDF5_SIGNATURE:
        return "hdf5"
    return "other"


def classify(path) -> tuple[str, Path]:
    """('step', dir), ('keras', file) or ('h5', file) for what `path` holds; else one-line ModelError."""
    p = Path(path)
    if p.is_dir():
        if (p / SPEC_FILE).is_file():
            return "step", p
        if (p / KERAS_FILE).is_file():
            return classify(p / KERAS_FILE)
        if (p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file():
            raise ModelError(f"{p}: a TensorFlow SavedModel directory, which Keras 3 cannot load as a model; "
                             f"{_EXPORT}")
        raise ModelError(f"{p}: no {SPEC_FILE} (a `streamer convert` output) or {KERAS_FILE} "
                         "(a `streamer train` output) in this directory")
    if not p.is_file():
        raise ModelError(f"{p}: no such file or directory")
    if p.name == SPEC_FILE:
        return "step", p.parent
    if p.name in ("saved_model.pb", "saved_model.pbtxt"):
        raise ModelError(f"{p}: part of a TensorFlow SavedModel, which Keras 3 cannot load as a model; {_EXPORT}")
    kind = _sniff(p)
    if kind == "zip":
        return "keras", p
    if kind == "hdf5":
        return "h5", p
    raise ModelError(f"{p}: not a Keras model file (neither a .keras archive nor an HDF5 .h5 file); expected "
                     "a .keras or .h5 model file, a `streamer train` directory or a `streamer convert` directory")


# ----------------------------------------------------------------------------- reading configs safely

def _weights_only(p: Path):
    raise ModelError(f"{p}: holds only weights (no model architecture), so it cannot be loaded on its own; "
                     f"{_EXPORT}")


def _keras_archive_config(p: Path) -> dict:
    try:
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                if any(n.endswith(".h5") for n in names):
                    _weights_only(p)
                raise ModelError(f"{p}: a zip archive without config.json, not a Keras model; expected a "
                                 ".keras file written by model.save('model.keras')")
            config = json.loads(z.read("config.json"))
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{p}: cannot read the .keras archive ({type(exc).__name__}: {exc})") from None
    version = str(meta.get("keras_version", ""))
    if version.startswith("2."):
        raise ModelError(f"{p}: a .keras file written by tf.keras/Keras {version}, whose .keras format Keras 3 "
                         "cannot read; from Keras 2 save the model as HDF5 instead (model.save('model.h5')) "
                         "and give that file")
    return config


def _h5_config(h5file, p: Path) -> dict:
    raw = h5file.attrs.get("model_config")
    if raw is None:
        _weights_only(p)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ModelError(f"{p}: the HDF5 file's model_config is not valid JSON ({exc})") from None


def _custom_class(obj: dict) -> str | None:
    """The class name of a serialised object that is not Keras' own (by its module/registered name)."""
    module = obj.get("module")
    registered = obj.get("registered_name")
    if isinstance(module, str) and not (module == "keras" or module.startswith("keras.")):
        return f"{obj['class_name']} (module {module})"
    if isinstance(registered, str) and ">" in registered:
        return registered
    return None


def check_config(config, p: Path) -> None:
    """Refuse Lambda layers and custom classes by reading the stored JSON config (nothing executed)."""
    stack = [config]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            name = obj.get("class_name")
            if name == "Lambda":
                raise ConversionError(f"{p}: {_LAMBDA}")
            custom = _custom_class(obj) if isinstance(name, str) else None
            if custom:
                raise ConversionError(
                    f"{p}: the model uses the custom class {custom}, which is refused: its code is not in "
                    "the file, and custom code may compute anything; rebuild the model from built-in Keras "
                    "layers")
            stack.extend(obj.values())
        elif isinstance(obj, list):
            stack.extend(obj)


def _keras2_compat(config, p: Path) -> None:
    """Drop Keras 2 config keys that Keras 3 refuses but that change nothing (in place)."""
    stack = [config]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            inner = obj.get("config")
            if isinstance(inner, dict) and "time_major" in inner:
                if inner.pop("time_major"):
                    raise ModelError(f"{p}: layer '{inner.get('name', '?')}' uses time_major=True "
                                     "(time, batch, features) inputs, which Keras 3 does not support; "
                                     "save the model with time_major=False")
            stack.extend(obj.values())
        elif isinstance(obj, list):
            stack.extend(obj)


def _is_op(entry) -> bool:
    """True for an operation node (a keras.ops call) of a Functional config, not a layer.

    `.keras` configs name the op's module (keras.src.ops...); `.h5` configs do not, but an op's config
    has neither `trainable` nor `dtype`, which every layer's config has (InputLayer has `dtype`).
    """
    if not isinstance(entry, dict):
        return False
    if "module" in entry:
        return str(entry.get("module") or "").startswith("keras.src.ops")
    config = entry.get("config") or {}
    return entry.get("class_name") != "InputLayer" and "trainable" not in config and "dtype" not in config


def _drop_mask_ops(config, p: Path) -> None:
    """Remove the implicit-mask operation nodes that Keras 3 writes into a Functional .h5 config (in place).

    Keras 3 stores a Masking/Embedding mask as `not_equal`/`any` operation nodes and passes it to the
    next layers as `mask=`; its own legacy .h5 loader cannot read those nodes back ("Unknown layer:
    'NotEqual'"). Without them Keras derives the very same mask again while rebuilding the graph. Any
    other operation is refused: it is not a layer, and the step model could not stream it anyway.
    """
    from models.graph import implicit_masks

    stack = [config]
    while stack:
        obj = stack.pop()
        if isinstance(obj, list):
            stack.extend(obj)
            continue
        if not isinstance(obj, dict):
            continue
        entries = obj.get("layers") if isinstance(obj.get("layers"), list) else None
        ops = {e["name"] for e in entries or [] if _is_op(e)}
        if ops:
            masks, helpers = implicit_masks(entries, ops)
            other = sorted(ops - set(masks) - helpers)
            if other:
                raise ModelError(f"{p}: the model's graph calls the operation '{other[0]}' (a keras.ops call, not a "
                                 "layer), which Keras cannot load from an .h5 file and which cannot be streamed; "
                                 "build the model from layers only")
            obj["layers"] = [e for e in entries if e["name"] not in ops]
            for entry in obj["layers"]:
                for node in entry.get("inbound_nodes") or []:
                    mask = node.get("kwargs", {}).get("mask") if isinstance(node, dict) else None
                    if isinstance(mask, dict) and (mask.get("config") or {}).get("keras_history", [None])[0] in masks:
                        del node["kwargs"]["mask"]
        stack.extend(obj.values())


# ----------------------------------------------------------------------------- loading

def _one_line(p: Path, exc: Exception) -> ModelError:
    text = " ".join(str(exc).split())
    low = text.lower()
    if "lambda" in low and "safe_mode" in low:
        return ConversionError(f"{p}: {_LAMBDA}")
    if "unknown layer" in low or "could not locate" in low or "unknown object" in low:
        if len(text) > 200:
            text = text[:200] + "..."
        return ConversionError(f"{p}: the model uses a class Keras does not know ({text}); custom layers and "
                               "objects are refused: rebuild the model from built-in Keras layers")
    if len(text) > 300:
        text = text[:300] + "..."
    return ModelError(f"{p}: cannot load the Keras model ({type(exc).__name__}: {text})")


def _h5_model(p: Path):
    """(in-memory h5py.File of `p` with a Keras-3-ready config); Lambda/custom classes refused first."""
    import h5py

    try:
        h5file = h5py.File(io.BytesIO(p.read_bytes()), "r+")  # a copy: the user's file is never touched
    except OSError as exc:
        raise ModelError(f"{p}: cannot read the HDF5 file ({' '.join(str(exc).split())})") from None
    config = _h5_config(h5file, p)
    check_config(config, p)
    _keras2_compat(config, p)
    _drop_mask_ops(config, p)
    h5file.attrs["model_config"] = json.dumps(config)
    return h5file


def load_keras_model(path):
    """A Keras model from a .keras or .h5 file (or a `streamer train` directory), loaded with safe_mode=True.

    Refuses Lambda layers and custom classes before anything is deserialised (and before TensorFlow is
    imported); a file that is not a full Keras model gives one line saying what to export instead.
    """
    kind, p = classify(path)
    if kind == "step":
        raise ModelError(f"{p}: a converted step model (step_model.json), not a Keras model; give the .keras "
                         "or .h5 file it was converted from")
    if kind == "h5":
        source = _h5_model(p)
    else:
        check_config(_keras_archive_config(p), p)
        if p.suffix != ".keras":
            raise ModelError(f"{p}: a Keras archive whose name does not end in .keras, which Keras refuses to "
                             "load; rename it to end in .keras")
        source = p
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras' deprecation notes about Keras 2 configs are not the user's
            if kind == "h5":
                from keras.src.legacy.saving import legacy_h5_format

                with source:
                    return legacy_h5_format.load_model_from_hdf5(source, compile=False, safe_mode=True)
            import keras

            return keras.saving.load_model(source, compile=False, safe_mode=True)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; the user needs one line
        raise _one_line(p, exc) from None

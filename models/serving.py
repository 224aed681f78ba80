"""Load a servable StepModel from whatever the user points at.

`load_step_model(path)` accepts
  - a converted directory (step_model.json + step_model.npz, from `streamer convert`),
  - a `streamer train` output directory (has model.keras; converted on the fly),
  - a `.keras` file (converted on the fly).
Keras files are always loaded with safe_mode=True, so a model with a Lambda layer (arbitrary
Python) is refused rather than executed.
"""

from __future__ import annotations

from pathlib import Path

from models.errors import ConversionError, ModelError
from models.stepmodel import SPEC_FILE, StepModel

KERAS_FILE = "model.keras"


def load_keras_model(path):
    """Load a .keras file with safe_mode=True; ModelError with one clear line if it cannot be."""
    import keras

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such file")
    try:
        return keras.saving.load_model(p, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; the user needs one line
        text = " ".join(str(exc).split())
        if "lambda" in text.lower() and "safe_mode" in text:
            raise ConversionError(
                f"{p}: the model contains a Lambda layer (arbitrary Python code), which is refused: "
                "it cannot be loaded safely (safe_mode=True) nor converted; rebuild the model without Lambda"
            ) from None
        if len(text) > 300:
            text = text[:300] + "..."
        raise ModelError(f"{p}: cannot load the Keras model ({type(exc).__name__}: {text})") from None


def resolve_model_path(path) -> tuple[str, Path]:
    """('step', dir) for a converted directory, ('keras', file) for a Keras model; else ModelError."""
    p = Path(path)
    if p.is_dir():
        if (p / SPEC_FILE).is_file():
            return "step", p
        if (p / KERAS_FILE).is_file():
            return "keras", p / KERAS_FILE
        raise ModelError(f"{p}: no {SPEC_FILE} (a `streamer convert` output) or {KERAS_FILE} "
                         "(a `streamer train` output) in this directory")
    if p.is_file():
        if p.suffix == ".keras":
            return "keras", p
        if p.name == SPEC_FILE:
            return "step", p.parent
        raise ModelError(f"{p}: expected a .keras file or a model directory")
    raise ModelError(f"{p}: no such file or directory")


def load_step_model(path) -> StepModel:
    """A ready-to-serve StepModel from a converted dir, a `streamer train` dir or a .keras file."""
    kind, p = resolve_model_path(path)
    if kind == "step":
        return StepModel.load(p)
    from models.convert import convert_model

    model = load_keras_model(p)
    step_model = convert_model(model)
    step_model.source.setdefault("keras_file", str(p))
    return step_model

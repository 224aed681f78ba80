"""Model construction: the Q&A architecture by default (LSTM 32 -> LSTM 8 -> per-step Dense).

The output head is a plain `Dense` applied to the 3-D (batch, time, units) tensor: Keras applies it to
every step, exactly what `TimeDistributed(Dense)` means, without TimeDistributed's broken handling of a
dynamic time axis (see `models.compat`).
"""

from __future__ import annotations

from typing import Sequence

import keras

from models.errors import ModelError
from models.train import parse_units  # noqa: F401 - re-exported (kept TensorFlow-free in models.train)

CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simplernn": keras.layers.SimpleRNN}

# The Q&A used categorical_crossentropy on a sigmoid head. Measured with the default recipe (2 seeds each),
# binary_crossentropy on the same head reaches the same per-step accuracy on lengths 10..1000
# (0.9841/0.9825 vs 0.9859/0.9824), so the Q&A's choice stays the default.
DEFAULT_LOSS = "categorical_crossentropy"
DEFAULT_LEARNING_RATE = 0.01


def default_loss(output_size: int, activation: str) -> str:
    """The loss used when none is given: CE for class heads, MSE for a linear (regression) head."""
    if activation in ("linear", None):
        return "mse"
    if output_size == 1:
        return "binary_crossentropy"
    return DEFAULT_LOSS


def default_metrics(output_size: int, loss: str) -> list:
    """Per-step accuracy (argmax for several outputs, 0.5 threshold for one) unless it is a regression."""
    if loss in ("mse", "mae", "mean_squared_error", "mean_absolute_error", "huber"):
        return ["mae"]
    if output_size == 1:
        return [keras.metrics.BinaryAccuracy(name="accuracy")]
    return [keras.metrics.CategoricalAccuracy(name="accuracy")]


def build_model(
    feature_size: int = 5,
    output_size: int = 2,
    cell: str = "lstm",
    units: Sequence[int] | str = (32, 8),
    activation: str = "sigmoid",
    loss: str | None = None,
    masking: bool = True,
    mask_value: float = 0.0,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int | None = None,
    compile: bool = True,
) -> keras.Model:
    """A stacked RNN over (batch, time, F) returning (batch, time, O), compiled with Adam.

    Input shape is (None, F): any length per batch. With `masking=True` a `Masking(mask_value)` layer comes
    first, so all-`mask_value` steps (the pads) never touch the state or the loss; without it, train with
    zero sample weights on the pads (`models.batching` does either).
    `seed` makes the initial weights reproducible.
    """
    cell_key = str(cell).lower()
    if cell_key not in CELLS:
        raise ModelError(f"unknown cell {cell!r}; expected one of {', '.join(CELLS)}")
    units = parse_units(units)
    if feature_size < 1 or output_size < 1:
        raise ModelError(f"feature_size and output_size must be >= 1, got {feature_size} and {output_size}")
    loss = loss or default_loss(output_size, activation)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    layers: list = [keras.Input(shape=(None, feature_size), name="features")]
    if masking:
        layers.append(keras.layers.Masking(mask_value=mask_value, name="masking"))
    for i, n in enumerate(units, start=1):
        layers.append(CELLS[cell_key](n, return_sequences=True, name=f"{cell_key}_{i}"))
    layers.append(keras.layers.Dense(output_size, activation=activation, name="output"))
    model = keras.Sequential(layers, name=f"{cell_key}_{'_'.join(map(str, units))}")
    if compile:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
            loss=loss,
            metrics=default_metrics(output_size, loss),
        )
    return model


def has_masking(model: keras.Model) -> bool:
    """True when the model's first processing layer is a Masking layer (pads are masked by the model)."""
    return any(isinstance(layer, keras.layers.Masking) for layer in model.layers)


def mask_value_of(model: keras.Model) -> float | None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.Masking):
            return float(layer.mask_value)
    return None


def model_io_sizes(model: keras.Model) -> tuple[int, int]:
    """(feature_size, output_size) of a per-step sequence model; ModelError if it is not one."""
    in_shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    out_shape = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else None
    if in_shape is None or out_shape is None or len(in_shape) != 3 or len(out_shape) != 3:
        raise ModelError(
            f"model {model.name!r} has input {in_shape} and output {out_shape}; expected per-step "
            "(batch, time, features) -> (batch, time, outputs) (RNN layers with return_sequences=True)"
        )
    if in_shape[2] is None or out_shape[2] is None:
        raise ModelError(f"model {model.name!r} must have a fixed feature and output size, got {in_shape}")
    return int(in_shape[2]), int(out_shape[2])

"""Rebuild a trained chain model so that it runs on any (batch, time), with the same weights.

Models are often trained under shapes that offline prediction cannot keep: a fixed batch size
(`batch_shape=(4, 1, 5)`, as the Q&A's stateful recipe), a fixed length (`Input((20, 5))`, needed by
`unroll=True`), `stateful=True` (state carried between calls, so one call's output depends on the
previous call), or `TimeDistributed(Dense)`, which Keras 3 breaks once the time axis is dynamic (see
`models.compat`). None of these change what the layers compute on one whole sequence, so
`rebuild(model)` builds the same chain of layers (read with `models.graph.flat_layers`, nested chains
flattened) from their configs with `stateful=False`, `unroll=False`, `TimeDistributed(Dense)` as the
plain `Dense`, an input of shape (None, None, ...) and copies the weights layer by layer. Masks are
derived again by Keras from the chain's own `Masking`/`Embedding(mask_zero=True)` layers.

The rebuilt model, called on a whole sequence, is what the trained model gives when fed that sequence
from a fresh state: for a stateful model trained one step at a time, exactly its step-by-step outputs.
"""

from __future__ import annotations

import keras

from models.errors import ModelError
from models.graph import flat_layers

# Config keys that pin a layer's input shape (Keras 2 style `LSTM(..., input_shape=...)`).
_SHAPE_KEYS = ("batch_input_shape", "batch_shape", "input_shape", "input_dim", "input_length")


def _fixed_shape(model) -> bool:
    shape = tuple(model.inputs[0].shape)
    return len(shape) < 2 or shape[0] is not None or shape[1] is not None


def _layer_flags(layer) -> bool:
    """True when the layer (or the layer it wraps) is stateful, unrolled or TimeDistributed."""
    if isinstance(layer, keras.layers.TimeDistributed):
        return True
    inner = getattr(layer, "layer", None)
    return bool(getattr(layer, "stateful", False) or getattr(layer, "unroll", False)
                or (inner is not None and _layer_flags(inner)))


def needs_rebuild(model) -> bool:
    """True when the model pins its batch size or length, or has a stateful/unrolled/TimeDistributed layer."""
    if _fixed_shape(model):
        return True
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
        elif _layer_flags(layer):
            return True
    return False


def _free_config(config: dict, stateless: bool) -> dict:
    config = {k: v for k, v in config.items() if k not in _SHAPE_KEYS}
    if stateless:
        for key in ("stateful", "unroll"):
            if config.get(key):
                config[key] = False
    return config


def _clone(layer, stateless: bool, unwrap: bool):
    """A fresh layer computing the same function (weights are copied later)."""
    if unwrap and isinstance(layer, keras.layers.TimeDistributed) and isinstance(layer.layer, keras.layers.Dense):
        config = _free_config(layer.layer.get_config(), stateless)
        config["name"] = layer.name  # keep the wrapper's name: weights and summaries stay recognisable
        return keras.layers.Dense.from_config(config)
    config = _free_config(layer.get_config(), stateless)
    inner = config.get("layer")
    if stateless and isinstance(inner, dict) and isinstance(inner.get("config"), dict):
        inner = dict(inner, config=_free_config(inner["config"], stateless))  # Bidirectional(LSTM(stateful))
        config["layer"] = inner
    return layer.__class__.from_config(config)


def rebuild(model, *, free_shape: bool = True, stateless: bool = True, unwrap_time_distributed: bool = True):
    """The same chain with free (batch, time), stateless, unrolled-off, TimeDistributed(Dense) -> Dense.

    `free_shape=False` keeps the input shape (batch size aside) and `stateless=False` keeps `stateful`
    and `unroll` (what `fix_time_distributed` needs for training). A compiled model's compile settings
    (loss, metrics, a fresh optimizer of the same config) are carried over. Raises ModelError for a
    model that is not a single-input single-output chain of layers.
    """
    layers = flat_layers(model)
    spec = model.inputs[0]
    shape = tuple(spec.shape)
    if free_shape:
        shape = (None, None) + shape[2:]
    new_input = keras.Input(batch_shape=shape, dtype=spec.dtype, name=spec.name or None)
    new_layers = [_clone(layer, stateless, unwrap_time_distributed) for layer in layers]
    if isinstance(model, keras.Sequential):
        fresh = keras.Sequential([new_input, *new_layers], name=model.name)
    else:
        x = new_input
        for layer in new_layers:
            x = layer(x)
        fresh = keras.Model(new_input, x, name=model.name)
    for old, new in zip(layers, new_layers):
        try:
            new.set_weights(old.get_weights())
        except ValueError as exc:
            raise ModelError(f"layer '{old.name}' ({type(old).__name__}): its weights do not fit the rebuilt "
                             f"layer ({' '.join(str(exc).split())})") from None
    compile_config = model.get_compile_config() if getattr(model, "compiled", False) else None
    if compile_config:
        fresh.compile_from_config(compile_config)
    return fresh


def free_model(model):
    """`model` itself when it already runs on any (batch, time); else `rebuild(model)`."""
    return rebuild(model) if needs_rebuild(model) else model

"""Compatibility fixes for Keras models written for older Keras (like the Q&A's).

`TimeDistributed` is broken on Keras 3 once the time axis is dynamic (input shape (None, F)): in a
compiled function, the second batch with another length fails ('Incompatible shapes: [B,L,k] vs.
[B,B,k]') and `model.predict` silently returns (1, 1, k) for every later length. A `Dense` layer applied
to a 3-D (batch, time, units) tensor already acts on every step independently, which is all
`TimeDistributed(Dense)` means, so `fix_time_distributed` swaps the wrapper for its inner Dense,
weights and all. The fixed model computes the same function and works with any length.
"""

from __future__ import annotations

import keras

from models.errors import ModelError


def _unwrap(layer):
    """The replacement for one layer: TimeDistributed(Dense) -> that Dense (fresh, same config)."""
    if isinstance(layer, keras.layers.TimeDistributed) and isinstance(layer.layer, keras.layers.Dense):
        inner = layer.layer
        config = inner.get_config()
        config["name"] = layer.name  # keep the wrapper's name: weights and summaries stay recognisable
        return keras.layers.Dense.from_config(config)
    return layer.__class__.from_config(layer.get_config())


def has_time_distributed(model) -> bool:
    """True when any layer (nested models included) is a TimeDistributed wrapper."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.TimeDistributed):
            return True
        if isinstance(layer, keras.Model) and has_time_distributed(layer):
            return True
    return False


def _chain(model) -> list:
    """The model's layers in order if it is a linear chain (one input, one output); else ModelError."""
    inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if not inputs or not outputs:
        raise ModelError(f"model {model.name!r} is not built; give it an Input(shape=(None, F)) first")
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"model {model.name!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
                         "fix_time_distributed handles linear models with one input and one output")
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    previous = inputs[0]
    for layer in layers:
        try:
            linked = layer.input is previous
        except (AttributeError, ValueError):  # a layer used at several places has no single input
            linked = False
        if not linked:
            raise ModelError(f"model {model.name!r} is not a linear chain at layer {layer.name!r}; "
                             "fix_time_distributed handles Sequential and linear Functional models")
        previous = layer.output
    if previous is not outputs[0]:
        raise ModelError(f"model {model.name!r} is not a linear chain (its output is not the last layer's)")
    return layers


def fix_time_distributed(model: keras.Model) -> keras.Model:
    """An equivalent model with every `TimeDistributed(Dense)` replaced by the plain `Dense` (same weights).

    Works for Sequential and linear Functional models (one input, layers applied one after another).
    A compiled model's compile settings (loss, metrics, a fresh optimizer of the same config) are
    carried over. A model without TimeDistributed is returned unchanged (the same object). Other
    wrapped layers (TimeDistributed of something else than Dense) are kept as they are.
    """
    if not has_time_distributed(model):
        return model
    if any(isinstance(l, keras.Model) for l in model.layers):
        raise ModelError(
            f"model {model.name!r} nests a model inside a model; flatten it before fixing TimeDistributed"
        )
    layers = _chain(model)
    spec = model.inputs[0]
    new_input = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype, name=spec.name or None)
    new_layers = [_unwrap(layer) for layer in layers]
    if isinstance(model, keras.Sequential):
        fixed = keras.Sequential([new_input, *new_layers], name=model.name)
    else:
        x = new_input
        for layer in new_layers:
            x = layer(x)
        fixed = keras.Model(new_input, x, name=model.name)
    for old, new in zip(layers, new_layers):
        new.set_weights(old.get_weights())
    compile_config = model.get_compile_config() if getattr(model, "compiled", False) else None
    if compile_config:
        fixed.compile_from_config(compile_config)
    return fixed

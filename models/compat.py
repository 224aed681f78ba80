"""Compatibility fixes for Keras models written for older Keras (like the Q&A's).

`TimeDistributed` is broken on Keras 3 once the time axis is dynamic (input shape (None, F)): in a
compiled function, the second batch with another length fails ('Incompatible shapes: [B,L,k] vs.
[B,B,k]') and `model.predict` silently returns (1, 1, k) for every later length. A `Dense` layer applied
to a 3-D (batch, time, units) tensor already acts on every step independently, which is all
`TimeDistributed(Dense)` means, so `fix_time_distributed` swaps the wrapper for its inner Dense,
weights and all. The fixed model computes the same function and works with any length.

The layer chain is read from the model's stored graph (`models.graph`), so this works as well for a
model loaded from a file as for one built in this process (see `models.rebuild`).
"""

from __future__ import annotations

import keras

from models.errors import ModelError


def has_time_distributed(model) -> bool:
    """True when any layer (nested models included) is a TimeDistributed wrapper."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.TimeDistributed):
            return True
        if isinstance(layer, keras.Model) and has_time_distributed(layer):
            return True
    return False


def fix_time_distributed(model: keras.Model) -> keras.Model:
    """An equivalent model with every `TimeDistributed(Dense)` replaced by the plain `Dense` (same weights).

    Works for Sequential and linear Functional models (one input, layers applied one after another;
    nested chains are flattened). The input shape, `stateful` and `unroll` are kept; a compiled model's
    compile settings (loss, metrics, a fresh optimizer of the same config) are carried over. A model
    without TimeDistributed is returned unchanged (the same object). Other wrapped layers
    (TimeDistributed of something else than Dense) are kept as they are.
    """
    from models.rebuild import rebuild

    if not has_time_distributed(model):
        return model
    if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        raise ModelError(f"model {model.name!r} is not built; give it an Input(shape=(None, F)) first")
    return rebuild(model, free_shape=False, stateless=False, unwrap_time_distributed=True)

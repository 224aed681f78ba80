"""Reading a Keras model's layer graph: the layers of a single-input single-output chain, in order.

`linear_layers(model)` yields the layers of a Sequential model, or of a Functional model whose layers
feed each other one after another (checked through the model's public config, as Keras stores it), with
a flag marking the layer whose output is the model's output. Anything else is refused with a
`ConversionError` saying why the model is not a chain.

Keras is never imported here: the functions only read a built model's attributes and config.
"""

from __future__ import annotations

from models.errors import ConversionError

# Layers that are random while training and identity at inference (unless called with training=True).
_TRAINING_NOISE = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout"}


def _kind(layer) -> str:
    return type(layer).__name__


def _history(obj) -> list[str]:
    """Names of the layers whose output tensors appear anywhere in a functional-config value."""
    found = []
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]["keras_history"][0]]
        for v in obj.values():
            found += _history(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found += _history(v)
    return found


def _endpoint_names(value) -> list[str]:
    """['name', 0, 0] or [['name', 0, 0], ...] (functional config input_layers/output_layers)."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        return [value[0]]
    return [v[0] for v in value or []]


def _not_linear(model, why: str):
    raise ConversionError(f"model '{model.name}' is not a linear chain of layers: {why}; "
                          "only single-input single-output chains can be converted")


def functional_chain(model) -> list:
    """The layers of a Functional model in order, checked (via its public config) to form a chain."""
    try:
        config = model.get_config()
        entries = config["layers"]
        in_names = _endpoint_names(config["input_layers"])
        out_names = _endpoint_names(config["output_layers"])
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot prove the topology
        raise ConversionError(f"model '{model.name}': cannot read its layer graph ({exc})") from None
    if len(in_names) != 1 or len(out_names) != 1:
        _not_linear(model, f"{len(in_names)} inputs and {len(out_names)} outputs")
    prev = in_names[0]
    layers = []
    for entry in entries:
        name = entry["name"]
        if entry.get("class_name") == "InputLayer":
            if name != in_names[0]:
                _not_linear(model, f"extra input '{name}'")
            continue
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) != 1:
            _not_linear(model, f"layer '{name}' is called {len(nodes)} times")
        sources = _history(nodes[0])
        if sources != [prev]:
            got = ", ".join(f"'{s}'" for s in sources) or "nothing"
            _not_linear(model, f"layer '{name}' takes {got} instead of just the previous layer '{prev}'")
        kwargs = nodes[0].get("kwargs") or {}
        layer = model.get_layer(name)
        if kwargs.get("training") is True and _kind(layer) in _TRAINING_NOISE:
            raise ConversionError(f"layer '{layer.name}' ({_kind(layer)}) cannot stream: it is called with "
                                  "training=True, so it is random at inference too")
        layers.append(layer)
        prev = name
    if prev != out_names[0]:
        _not_linear(model, f"the chain ends at '{prev}' but the output is '{out_names[0]}'")
    return layers


def linear_layers(model, is_last_outer: bool = True):
    """The model's layers in order, checking that they form a single-input single-output chain.

    Yields (layer, is_last) where is_last marks the layer whose output is the model's output.
    """
    inputs = list(getattr(model, "inputs", None) or [])
    outputs = list(getattr(model, "outputs", None) or [])
    if len(inputs) != 1 or len(outputs) != 1:
        _not_linear(model, f"{len(inputs)} inputs and {len(outputs)} outputs")
    layers = list(model.layers) if _kind(model) == "Sequential" else functional_chain(model)
    for i, layer in enumerate(layers):
        yield layer, is_last_outer and i == len(layers) - 1

"""Reading a Keras model's layer graph: the layers of a single-input single-output chain, in order.

`linear_layers(model)` yields the layers of a Sequential model, or of a Functional model whose layers
feed each other one after another (checked through the model's public config, as Keras stores it), with
a flag marking the layer whose output is the model's output. Anything else is refused with a
`ConversionError` saying why the model is not a chain. `flat_layers(model)` is the same chain with nested
Sequential/Functional models expanded into their own layers.

A Functional model's config holds more than layers: the mask that a `Masking` (or an `Embedding` with
`mask_zero=True`) computes is stored as operation nodes (`not_equal`, `any`), and the layers after it
are called with `mask=<that tensor>`. Those operations are not layers (`model.get_layer` does not know
them); they are read here and accepted when they are exactly the mask Keras derives from the chain's own
Masking/Embedding layer (what a Sequential model does implicitly). Any other operation in the graph, or
an explicit mask of another kind, is refused: the step model could not reproduce it.

Keras is never imported here: the functions only read a built model's attributes and config.
"""

from __future__ import annotations

from models.errors import ConversionError

# Layers that are random while training and identity at inference (unless called with training=True).
_TRAINING_NOISE = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout"}
_NESTED = ("Sequential", "Functional")


def _kind(layer) -> str:
    return type(layer).__name__


def _history(obj) -> list[str]:
    """Names of the layers/operations whose output tensors appear anywhere in a functional-config value."""
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


def _node_parts(node) -> tuple[list[str], list[str], dict]:
    """(data sources, mask sources, other kwargs) of one inbound node, in either config dialect.

    Keras 3 stores {"args": [...], "kwargs": {...}}; configs written by Keras 2 store
    [[name, node_index, tensor_index, kwargs], ...].
    """
    if isinstance(node, dict):
        kwargs = dict(node.get("kwargs") or {})
        args = node.get("args") or []
    else:
        kwargs = {}
        for item in node or []:
            if isinstance(item, (list, tuple)) and len(item) > 3 and isinstance(item[3], dict):
                kwargs.update(item[3])
        args = [{"class_name": "__keras_tensor__", "config": {"keras_history": list(item[:3])}}
                for item in node or [] if isinstance(item, (list, tuple)) and item and isinstance(item[0], str)]
    mask = kwargs.pop("mask", None)
    return _history(args), _history(mask), kwargs


class _MaskOps:
    """The operation nodes of a Functional config (not layers), checked to be Keras' implicit masks."""

    def __init__(self, model):
        self.model = model
        self.entries: dict[str, dict] = {}

    def add(self, entry: dict) -> None:
        self.entries[entry["name"]] = entry

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def _source(self, entry: dict, cls: str) -> tuple[str, list]:
        """The single tensor input of operation `entry` (expected of class `cls`) and its other args."""
        if entry.get("class_name") != cls:
            raise KeyError
        args = (entry.get("inbound_nodes") or [{}])[0].get("args") or []
        sources = _history(args[:1])
        if len(entry.get("inbound_nodes") or []) != 1 or len(sources) != 1 or _history(args[1:]):
            raise KeyError
        return sources[0], list(args[1:])

    def implied_by(self, name: str) -> tuple[str, object]:
        """(kind, value) of the mask op `name`: ('masking', mask_value) for any(not_equal(x, v), -1)
        or ('embedding', 0) for not_equal(x, 0), with x the tensor the op reads. KeyError otherwise."""
        entry = self.entries[name]
        if entry.get("class_name") == "Any":
            config = entry.get("config") or {}
            if config.get("axis") not in (-1, [-1]) or config.get("keepdims"):
                raise KeyError
            inner, _ = self._source(entry, "Any")
            source, rest = self._source(self.entries[inner], "NotEqual")
            if len(rest) != 1 or not isinstance(rest[0], (int, float)):
                raise KeyError
            return source, ("masking", float(rest[0]))
        source, rest = self._source(entry, "NotEqual")
        if rest != [0] and rest != [0.0]:
            raise KeyError
        return source, ("embedding", 0)

    def check(self, layer_name: str, mask_name: str, producers: dict[str, object]) -> None:
        """Refuse a mask that is not the one Keras derives from an earlier Masking/Embedding layer."""
        why = (f"layer '{layer_name}' is called with a mask computed by operation '{mask_name}', which is not "
               "the mask of an earlier Masking layer (or Embedding with mask_zero=True)")
        try:
            source, (kind, value) = self.implied_by(mask_name)
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ConversionError(f"model '{self.model.name}': {why}; such masks cannot be streamed") from None
        layer = producers.get(source)
        if layer is None:
            raise ConversionError(f"model '{self.model.name}': {why}; such masks cannot be streamed")
        if kind == "masking" and not (_kind(layer) == "Masking" and float(layer.mask_value) == value):
            raise ConversionError(f"model '{self.model.name}': {why}; such masks cannot be streamed")
        if kind == "embedding" and not (_kind(layer) == "Embedding" and getattr(layer, "mask_zero", False)):
            raise ConversionError(f"model '{self.model.name}': {why}; such masks cannot be streamed")


def _read_config(model) -> tuple[list, str, str]:
    try:
        config = model.get_config()
        entries = config["layers"]
        in_names = _endpoint_names(config["input_layers"])
        out_names = _endpoint_names(config["output_layers"])
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot prove the topology
        raise ConversionError(f"model '{model.name}': cannot read its layer graph ({exc})") from None
    if len(in_names) != 1 or len(out_names) != 1:
        _not_linear(model, f"{len(in_names)} inputs and {len(out_names)} outputs")
    return entries, in_names[0], out_names[0]


def _names(sources: list[str]) -> str:
    return ", ".join(f"'{s}'" for s in sources) or "nothing"


def functional_chain(model) -> list:
    """The layers of a Functional model in order, checked (via its public config) to form a chain.

    Operation nodes that compute Keras' implicit Masking/Embedding mask are skipped (see the module
    docstring); any other operation, a branch, a reused layer or an extra input is refused.
    """
    entries, in_name, out_name = _read_config(model)
    by_name = {layer.name: layer for layer in model.layers}
    mask_ops = _MaskOps(model)
    prev = in_name
    # Which layer's *input* each chain tensor is: a mask op reads the tensor a Masking/Embedding consumes.
    consumers: dict[str, object] = {}
    layers = []
    pending_masks: list[tuple[str, str]] = []
    for entry in entries:
        name = entry["name"]
        if entry.get("class_name") == "InputLayer":
            if name != in_name:
                _not_linear(model, f"extra input '{name}'")
            continue
        if name not in by_name:  # an operation (keras.ops call), not a layer
            mask_ops.add(entry)
            continue
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) != 1:
            _not_linear(model, f"layer '{name}' is called {len(nodes)} times")
        sources, masks, kwargs = _node_parts(nodes[0])
        if sources != [prev]:
            ops = [s for s in sources if s in mask_ops]
            if ops:
                _not_linear(model, f"layer '{name}' takes the result of operation {_names(ops)} "
                                   "(a keras.ops call, not a layer)")
            _not_linear(model, f"layer '{name}' takes {_names(sources)} instead of just the previous layer '{prev}'")
        extra = _history(kwargs)
        if extra:
            _not_linear(model, f"layer '{name}' is called with tensors {_names(extra)} as extra arguments")
        layer = by_name[name]
        if kwargs.get("training") is True and _kind(layer) in _TRAINING_NOISE:
            raise ConversionError(f"layer '{layer.name}' ({_kind(layer)}) cannot stream: it is called with "
                                  "training=True, so it is random at inference too")
        pending_masks += [(name, m) for m in masks]
        consumers.setdefault(prev, layer)
        layers.append(layer)
        prev = name
    if prev != out_name:
        _not_linear(model, f"the chain ends at '{prev}' but the output is '{out_name}'")
    for layer_name, mask_name in pending_masks:
        if mask_name not in mask_ops:
            _not_linear(model, f"layer '{layer_name}' is called with a mask from layer '{mask_name}'")
        mask_ops.check(layer_name, mask_name, consumers)
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


def flat_layers(model) -> list:
    """The chain's layers with nested Sequential/Functional chains expanded, InputLayers left out."""
    flat = []
    for layer, _ in linear_layers(model):
        if _kind(layer) in _NESTED:
            flat += flat_layers(layer)
        elif _kind(layer) != "InputLayer":
            flat.append(layer)
    return flat

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


def _single_input(entry: dict) -> tuple[str, list] | None:
    """(the tensor an operation entry reads, its other arguments), or None if it is not that simple."""
    nodes = entry.get("inbound_nodes") or []
    if len(nodes) != 1 or not isinstance(nodes[0], dict):
        return None
    args = nodes[0].get("args") or []
    sources = _history(args[:1])
    if len(sources) != 1 or _history(args[1:]) or _history(nodes[0].get("kwargs") or {}):
        return None
    return sources[0], list(args[1:])


def _is_zero(args: list) -> bool:
    return len(args) == 1 and type(args[0]) in (int, float) and args[0] == 0


def implicit_masks(entries: list[dict], ops: set[str]) -> tuple[dict[str, str], set[str]]:
    """The operation nodes of a Functional config that compute Keras' implicit masks.

    Returns ({mask op name: the Masking/Embedding layer whose mask it is}, {helper op names}): for a
    `Masking(v)` reading tensor x, `any(not_equal(x, v), axis=-1)` (the `not_equal` is a helper); for an
    `Embedding(mask_zero=True)` reading x, `not_equal(x, 0)`. `ops` names the entries that are operations.
    """
    by_name = {e["name"]: e for e in entries}
    reads = {}  # op name -> (source tensor, other args) for simple single-input operations
    for name in ops:
        found = _single_input(by_name[name]) if name in by_name else None
        if found is not None:
            reads[name] = found
    masks, helpers = {}, set()
    for entry in entries:
        kind, config = entry.get("class_name"), entry.get("config") or {}
        nodes = entry.get("inbound_nodes") or []
        if kind not in ("Masking", "Embedding") or len(nodes) != 1:
            continue
        sources = _node_parts(nodes[0])[0]
        if len(sources) != 1:
            continue
        for name, (src, rest) in reads.items():
            op_kind = by_name[name].get("class_name")
            if src != sources[0] or op_kind != "NotEqual":
                continue
            if kind == "Embedding" and config.get("mask_zero") and _is_zero(rest):
                masks[name] = entry["name"]
            elif kind == "Masking" and len(rest) == 1 and rest[0] == config.get("mask_value", 0.0):
                for outer, (outer_src, outer_rest) in reads.items():
                    outer_config = by_name[outer].get("config") or {}
                    if (outer_src == name and not outer_rest and by_name[outer].get("class_name") == "Any"
                            and outer_config.get("axis") in (-1, [-1]) and not outer_config.get("keepdims")):
                        masks[outer] = entry["name"]
                        helpers.add(name)
    return masks, helpers


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
    ops = {e["name"] for e in entries if e["name"] not in by_name and e.get("class_name") != "InputLayer"}
    prev = in_name
    layers, seen, used_masks = [], set(), []
    for entry in entries:
        name = entry["name"]
        if entry.get("class_name") == "InputLayer":
            if name != in_name:
                _not_linear(model, f"extra input '{name}'")
            continue
        if name in ops:  # an operation (a keras.ops call), not a layer: checked below
            continue
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) != 1:
            _not_linear(model, f"layer '{name}' is called {len(nodes)} times")
        sources, masks, kwargs = _node_parts(nodes[0])
        if sources != [prev]:
            from_ops = [s for s in sources if s in ops]
            if from_ops:
                _not_linear(model, f"layer '{name}' takes the result of operation {_names(from_ops)} "
                                   "(a keras.ops call, not a layer)")
            _not_linear(model, f"layer '{name}' takes {_names(sources)} instead of just the previous layer '{prev}'")
        extra = _history(kwargs)
        if extra:
            _not_linear(model, f"layer '{name}' is called with tensors {_names(extra)} as extra arguments")
        layer = by_name[name]
        if kwargs.get("training") is True and _kind(layer) in _TRAINING_NOISE:
            raise ConversionError(f"layer '{layer.name}' ({_kind(layer)}) cannot stream: it is called with "
                                  "training=True, so it is random at inference too")
        used_masks += [(name, m, set(seen)) for m in masks]
        seen.add(name)
        layers.append(layer)
        prev = name
    if prev != out_name:
        _not_linear(model, f"the chain ends at '{prev}' but the output is '{out_name}'")
    _check_masks(model, entries, ops, used_masks)
    return layers


def _check_masks(model, entries, ops: set[str], used: list) -> None:
    """Every mask a layer is called with is the implicit mask of an earlier Masking/Embedding layer."""
    masks, _ = implicit_masks(entries, ops)
    for layer_name, mask_name, earlier in used:
        if masks.get(mask_name) not in earlier:
            what = f"operation '{mask_name}'" if mask_name in ops else f"layer '{mask_name}'"
            raise ConversionError(
                f"model '{model.name}': layer '{layer_name}' is called with a mask computed by {what}, which "
                "is not the mask of an earlier Masking layer (or Embedding with mask_zero=True); such masks "
                "cannot be streamed")


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

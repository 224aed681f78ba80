"""The model zoo: Keras models of the kinds users bring, as specs the test suite parametrises over.

Each `Entry` says how to build one model (with Keras 3, or with tf.keras / Keras 2 for `keras2` entries),
in which file format to save it, what data it takes and what the CLI must do with it: stream it
(`convert` -> `replay` parity, `predict` parity), or refuse it with one line matching `refuse`.

Nothing here imports Keras at module level: the test process only reads the specs; the models are built
by `tests/zoo_build.py` in a separate process (`build(k, free)` gets the `keras` or `tf_keras` module).
`free=True` asks for the same architecture with a free (batch, time) input, not stateful, not unrolled:
the builder copies the trained weights into it to compute the reference outputs of models that cannot
be called on other shapes themselves (fixed batch/length, stateful).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# Stream lengths of every streaming entry: mixed 1..150 (replay interleaves them).
LENGTHS = (1, 2, 3, 7, 150, 19, 33, 64, 5, 100, 120, 77)


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable  # build(k, free: bool) -> keras model
    features: int = 5  # F (float input) or the vocabulary size (tokens)
    fmt: str = "keras"  # keras | h5 | weights_h5 | savedmodel | tf_keras_keras
    keras2: bool = False  # built and saved by tf.keras (Keras 2) instead of Keras 3
    tokens: bool = False  # input is one integer id per step
    masked: bool = False  # the data holds masked steps (all-zero rows, or token 0)
    many_to_one: bool = False
    fixed: bool = False  # cannot be called on other shapes: references come from the free twin
    refuse: str | None = None  # regex of convert's one-line refusal (None: it must stream)
    predict: str | None = "parity"  # "parity", or a regex of predict's one-line refusal

    @property
    def file(self) -> str:
        return {"keras": f"{self.name}.keras", "h5": f"{self.name}.h5", "weights_h5": f"{self.name}.weights.h5",
                "savedmodel": self.name, "tf_keras_keras": f"{self.name}.keras"}[self.fmt]

    @property
    def streams(self) -> bool:
        return self.refuse is None


# ----------------------------------------------------------------------------- builders

def _seq(k, shape, *layers, batch=None):
    return k.Sequential([k.Input(shape=shape, batch_size=batch), *layers])


def qa_answer(k, free=False):
    """The Q&A answer's model, exactly: LSTM(32) -> LSTM(8) -> TimeDistributed(Dense(2, sigmoid))."""
    L = k.layers
    return _seq(k, (None, 5), L.LSTM(32, return_sequences=True), L.LSTM(8, return_sequences=True),
                L.TimeDistributed(L.Dense(2, activation="sigmoid")))


def qa_masked(k, free=False):
    """The Q&A recipe with its Masking(0.0) first (padded batches)."""
    L = k.layers
    return _seq(k, (None, 5), L.Masking(0.0), L.LSTM(32, return_sequences=True), L.LSTM(8, return_sequences=True),
                L.TimeDistributed(L.Dense(2, activation="sigmoid")))


def keras2_style(k, free=False):
    """Keras 2 idiom: an empty Sequential, the first layer given input_shape."""
    L = k.layers
    model = k.Sequential()
    model.add(L.GRU(12, input_shape=(None, 4), return_sequences=True))
    model.add(L.Dense(3, activation="softmax"))
    return model


def keras2_qa(k, free=False):
    """The Q&A answer as written for Keras 2: model.add(LSTM(32, input_shape=(None, 5), ...))."""
    L = k.layers
    model = k.Sequential()
    model.add(L.LSTM(32, input_shape=(None, 5), return_sequences=True))
    model.add(L.LSTM(8, return_sequences=True))
    model.add(L.TimeDistributed(L.Dense(2, activation="sigmoid")))
    return model


def stateful_qa(k, free=False):
    """The Q&A's stateful training model: batch_shape (4, 1, 5), stateful=True (free: the same, stateless)."""
    L = k.layers
    opts = {} if free else {"stateful": True}
    return _seq(k, (None, 5) if free else (1, 5), L.LSTM(32, return_sequences=True, **opts),
                L.LSTM(8, return_sequences=True, **opts), L.TimeDistributed(L.Dense(2, activation="sigmoid")),
                batch=None if free else 4)


def stateful_masked_k2(k, free=False):
    L = k.layers
    opts = {} if free else {"stateful": True}
    return _seq(k, (None, 5) if free else (1, 5), L.Masking(0.0), L.LSTM(6, return_sequences=True, **opts),
                L.Dense(2), batch=None if free else 4)


def functional_masking(k, free=False):
    """The issue's Functional model: Input -> Masking(0.0) -> GRU(16) -> LSTM(12) -> Dense(4)."""
    L = k.layers
    inp = k.Input((None, 3))
    x = L.Masking(0.0)(inp)
    x = L.GRU(16, return_sequences=True)(x)
    x = L.LSTM(12, return_sequences=True)(x)
    return k.Model(inp, L.Dense(4)(x))


def unrolled_fixed(k, free=False):
    """Trained on one fixed length with unroll=True: Input((20, 5))."""
    L = k.layers
    inp = k.Input((None, 5) if free else (20, 5))
    x = L.LSTM(8, return_sequences=True, unroll=not free)(inp)
    x = L.SimpleRNN(6, return_sequences=True, unroll=not free)(x)
    return k.Model(inp, L.Dense(2)(x))


def fixed_batch(k, free=False):
    L = k.layers
    return _seq(k, (None, 5), L.GRU(7, return_sequences=True), L.Dense(2), batch=None if free else 8)


def simple_rnn_stack(k, free=False):
    L = k.layers
    return _seq(k, (None, 6), L.SimpleRNN(10, activation="relu", return_sequences=True),
                L.SimpleRNN(5, return_sequences=True), L.Dense(3, activation="softmax"))


def gru_v1(k, free=False):
    L = k.layers
    return _seq(k, (None, 4), L.GRU(9, reset_after=False, return_sequences=True),
                L.GRU(5, return_sequences=True, recurrent_activation="hard_sigmoid"), L.Dense(1, activation="sigmoid"))


def rnn_cells(k, free=False):
    L = k.layers
    return _seq(k, (None, 5), L.RNN(L.LSTMCell(8), return_sequences=True),
                L.RNN(L.GRUCell(6), return_sequences=True), L.Dense(2))


def nested_chain(k, free=False):
    """A Sequential used as a layer inside a Functional model."""
    L = k.layers
    inner = k.Sequential([k.Input((None, 8)), L.LSTM(6, return_sequences=True), L.Dense(4, activation="tanh")])
    inp = k.Input((None, 5))
    x = L.Dense(8, activation="relu")(inp)
    return k.Model(inp, L.Dense(2)(inner(x)))


def activations_mix(k, free=False):
    L = k.layers
    return _seq(k, (None, 5), L.Dense(8), L.ReLU(max_value=3.0), L.LSTM(6, return_sequences=True), L.Dropout(0.3),
                L.Dense(6), L.LeakyReLU(negative_slope=0.2), L.ELU(), L.Activation("tanh"), L.Dense(3),
                L.Softmax())


def functional_masking_h5(k, free=False):
    return functional_masking(k, free)


# ---- token inputs, normalisation, causal convolutions, many-to-one heads

def embedding_lstm(k, free=False):
    L = k.layers
    return _seq(k, (None,), L.Embedding(40, 8), L.LSTM(10, return_sequences=True), L.Dense(3))


def embedding_mask_zero(k, free=False):
    L = k.layers
    return _seq(k, (None,), L.Embedding(30, 6, mask_zero=True), L.GRU(8, return_sequences=True),
                L.Dense(2, activation="sigmoid"))


def functional_embedding_mask(k, free=False):
    L = k.layers
    inp = k.Input((None,), dtype="int32")
    x = L.Embedding(25, 5, mask_zero=True)(inp)
    x = L.LSTM(7, return_sequences=True)(x)
    return k.Model(inp, L.Dense(2)(x))


def layer_norm(k, free=False):
    L = k.layers
    return _seq(k, (None, 5), L.LayerNormalization(), L.LSTM(8, return_sequences=True),
                L.LayerNormalization(center=False), L.Dense(2))


def batch_norm(k, free=False):
    L = k.layers
    return _seq(k, (None, 5), L.BatchNormalization(), L.GRU(8, return_sequences=True), L.BatchNormalization(),
                L.Dense(2))


def normalization(k, free=False):
    import numpy as np

    L = k.layers
    rng = np.random.default_rng(3)
    mean, var = rng.normal(size=5).astype("float32"), rng.uniform(0.5, 3.0, size=5).astype("float32")
    return _seq(k, (None, 5), L.Normalization(mean=mean, variance=var), L.LSTM(8, return_sequences=True),
                L.Dense(2))


def unit_norm(k, free=False):
    L = k.layers
    return _seq(k, (None, 5), L.Dense(6), L.UnitNormalization(), L.GRU(6, return_sequences=True), L.Dense(2))


def rescaling(k, free=False):
    L = k.layers
    return _seq(k, (None, 5), L.Rescaling(0.5, offset=-0.25), L.LSTM(8, return_sequences=True), L.Dense(2))


def causal_conv(k, free=False):
    L = k.layers
    return _seq(k, (None, 5), L.Conv1D(8, 3, padding="causal", activation="relu"),
                L.LSTM(8, return_sequences=True), L.Dense(2))


def causal_conv_dilated(k, free=False):
    L = k.layers
    return _seq(k, (None, 4), L.Conv1D(6, 2, padding="causal", dilation_rate=4),
                L.Conv1D(5, 4, padding="causal", dilation_rate=2, activation="tanh"), L.GRU(6, return_sequences=True),
                L.Conv1D(3, 1, padding="causal"))


def many_to_one_lstm(k, free=False):
    L = k.layers
    return _seq(k, (None, 5), L.LSTM(12, return_sequences=True), L.LSTM(8), L.Dense(3, activation="softmax"))


def many_to_one_gap(k, free=False):
    L = k.layers
    return _seq(k, (None, 4), L.GRU(8, return_sequences=True), L.GlobalAveragePooling1D(), L.Dense(2))


def many_to_one_gmp(k, free=False):
    L = k.layers
    inp = k.Input((None, 4))
    x = L.LSTM(8, return_sequences=True)(inp)
    x = L.GlobalMaxPooling1D()(x)
    return k.Model(inp, L.Dense(1, activation="sigmoid")(x))


def keras2_many_to_one(k, free=False):
    L = k.layers
    model = k.Sequential()
    model.add(L.Masking(0.0, input_shape=(None, 4)))
    model.add(L.LSTM(10))
    model.add(L.Dense(3, activation="softmax"))
    return model


def keras2_embedding(k, free=False):
    L = k.layers
    model = k.Sequential()
    model.add(L.Embedding(30, 6, mask_zero=True))
    model.add(L.LSTM(8, return_sequences=True))
    model.add(L.Dense(2))
    model.build((None, None))
    return model


# ---- refused when streaming (some still predict offline)

def bidirectional(k, free=False):
    L = k.layers
    return _seq(k, (None, 4), L.Bidirectional(L.LSTM(4, return_sequences=True)), L.Dense(2))


def conv_same(k, free=False):
    L = k.layers
    return _seq(k, (None, 4), L.Conv1D(4, 3, padding="same"), L.LSTM(4, return_sequences=True))


def attention(k, free=False):
    L = k.layers
    inp = k.Input((None, 4))
    x = L.MultiHeadAttention(2, 4)(inp, inp)
    return k.Model(inp, L.Dense(2)(x))


def repeat_vector(k, free=False):
    L = k.layers
    return _seq(k, (None, 4), L.LSTM(5), L.RepeatVector(6), L.LSTM(3, return_sequences=True))


def branching(k, free=False):
    L = k.layers
    inp = k.Input((None, 4))
    a = L.LSTM(4, return_sequences=True)(inp)
    b = L.GRU(4, return_sequences=True)(inp)
    return k.Model(inp, L.Dense(2)(L.Concatenate()([a, b])))


def ops_in_graph(k, free=False):
    L = k.layers
    inp = k.Input((None, 4))
    x = L.LSTM(4, return_sequences=True)(inp)
    x = k.ops.multiply(x, 2.0)
    return k.Model(inp, L.Dense(2)(x))


def lambda_layer(k, free=False):
    L = k.layers
    return _seq(k, (None, 4), L.Lambda(lambda t: t * 2.0), L.LSTM(3, return_sequences=True))


def keras2_lambda(k, free=False):
    L = k.layers
    model = k.Sequential()
    model.add(L.Lambda(lambda t: t * 2.0, input_shape=(None, 4)))
    model.add(L.LSTM(3, return_sequences=True))
    return model


def custom_layer(k, free=False):
    L = k.layers

    @k.saving.register_keras_serializable(package="zoo")
    class Doubler(L.Layer):
        def call(self, x):
            return x * 2.0

    return _seq(k, (None, 4), Doubler(), L.LSTM(3, return_sequences=True))


def plain_lstm(k, free=False):
    L = k.layers
    return _seq(k, (None, 4), L.LSTM(3, return_sequences=True), L.Dense(2))


def _refused(name, build, regex, **kw):
    """An entry that convert refuses (regex); predict refuses it the same way unless predict= is given."""
    kw.setdefault("predict", regex)
    return Entry(name, build, refuse=regex, **kw)


ENTRIES: list[Entry] = [
    # ---- the models (Keras 3 files)
    Entry("qa_answer", qa_answer),
    Entry("qa_answer_h5", qa_answer, fmt="h5"),
    Entry("qa_masked", qa_masked, masked=True),
    Entry("keras2_style_gru", keras2_style, features=4),
    Entry("stateful_qa", stateful_qa, fixed=True),
    Entry("functional_masking", functional_masking, features=3, masked=True),
    Entry("functional_masking_h5", functional_masking_h5, features=3, masked=True, fmt="h5"),
    Entry("unrolled_fixed_length", unrolled_fixed, fixed=True),
    Entry("fixed_batch", fixed_batch, fixed=True),
    Entry("simple_rnn_stack", simple_rnn_stack, features=6),
    Entry("gru_reset_before", gru_v1, features=4),
    Entry("rnn_cells", rnn_cells),
    Entry("nested_sequential", nested_chain),
    Entry("activations_mix", activations_mix),
    # ---- real Keras 2 (tf.keras) .h5 files
    Entry("k2_qa_answer_h5", keras2_qa, fmt="h5", keras2=True),
    Entry("k2_stateful_masked_h5", stateful_masked_k2, fmt="h5", keras2=True, fixed=True, masked=True),
    Entry("k2_functional_masking_h5", functional_masking, features=3, fmt="h5", keras2=True, masked=True),
    Entry("k2_gru_h5", keras2_style, features=4, fmt="h5", keras2=True),
    # ---- token inputs, normalisation, causal convolutions, many-to-one heads
    Entry("embedding_lstm", embedding_lstm, features=40, tokens=True),
    Entry("embedding_mask_zero", embedding_mask_zero, features=30, tokens=True, masked=True),
    Entry("functional_embedding_mask", functional_embedding_mask, features=25, tokens=True, masked=True),
    Entry("layer_norm", layer_norm),
    Entry("batch_norm", batch_norm),
    Entry("normalization", normalization),
    Entry("unit_norm", unit_norm),
    Entry("rescaling", rescaling),
    Entry("causal_conv", causal_conv),
    Entry("causal_conv_dilated", causal_conv_dilated, features=4),
    Entry("many_to_one_lstm", many_to_one_lstm, many_to_one=True),
    Entry("many_to_one_gap", many_to_one_gap, features=4, many_to_one=True),
    Entry("many_to_one_gmp", many_to_one_gmp, features=4, many_to_one=True),
    Entry("k2_many_to_one_h5", keras2_many_to_one, features=4, fmt="h5", keras2=True, many_to_one=True,
          masked=True),
    Entry("k2_embedding_h5", keras2_embedding, features=30, fmt="h5", keras2=True, tokens=True, masked=True),
    # ---- refused for streaming; predict still works offline where the model runs on any length
    _refused("bidirectional", bidirectional, r"Bidirectional", features=4, predict="parity"),
    _refused("conv1d_same", conv_same, r"Conv1D", features=4, predict="parity"),
    _refused("attention", attention, r"not a linear chain|attention", features=4, predict="parity"),
    _refused("branching", branching, r"not a linear chain", features=4, predict="parity"),
    _refused("ops_in_graph", ops_in_graph, r"operation 'multiply'", features=4, predict="parity"),
    _refused("repeat_vector", repeat_vector, r"RepeatVector", features=4, predict=r"output"),
    # ---- refused on loading (convert and predict alike)
    _refused("lambda_keras", lambda_layer, r"Lambda layer", features=4),
    _refused("k2_lambda_h5", keras2_lambda, r"Lambda layer", features=4, fmt="h5", keras2=True),
    _refused("custom_layer", custom_layer, r"custom class", features=4),
    _refused("weights_only", plain_lstm, r"only weights", features=4, fmt="weights_h5"),
    _refused("k2_weights_only_h5", plain_lstm, r"only weights", features=4, fmt="weights_h5", keras2=True),
    _refused("k2_savedmodel", plain_lstm, r"SavedModel", features=4, fmt="savedmodel", keras2=True),
    _refused("k2_keras_format", keras2_qa, r"tf\.keras", fmt="tf_keras_keras", keras2=True),
]

BY_NAME = {e.name: e for e in ENTRIES}

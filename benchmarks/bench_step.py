"""Cost of one streaming step for the Q&A model (LSTM(32) -> LSTM(8) -> Dense(2, sigmoid), 5 features).

Compares, in one run and on the same weights:
  numpy StepModel.step        the product's kernel (models/stepmodel.py), state in/out as arrays
  tf.function step            the Keras cells called inside a tf.function with state in/out
                              (numpy in, numpy out, like the serving loop needs); also with
                              jit_compile=True (XLA)
  Keras predict_on_batch      a stateful timesteps=1 copy of the model (weights transferred),
                              batch 1 only (a stateful model has a fixed batch size)

and the numpy StepModel.step of two more models (5 features each):
  causal-Conv1D (TCN)         Conv1D(32, 3, causal, relu) dilations 1, 2, 4 -> Dense(2, sigmoid);
                              the last 2, 4 and 8 inputs of the three convs are in the state (394 floats)
  many-to-one classifier      LSTM(32) -> GlobalAveragePooling1D -> Dense(3, softmax): the class
                              probabilities on the sequence so far, at every step (state 129 floats)

Method: per case, warm up, then R rounds of N calls each; a round's time / N is the cost per
call. Prints the best round (least disturbed by other processes) and the median.
stream-steps/s = batch / (best µs per call).

Usage: python benchmarks/bench_step.py [--batches 1,256,4096] [--rounds 7] [--threads N] [--tf-threads N] [--no-tf]
--threads sets OPENBLAS_NUM_THREADS / OMP_NUM_THREADS for numpy's BLAS (default: leave as is);
--tf-threads sets TensorFlow's intra/inter-op thread pools. Serving should run numpy's BLAS
single-threaded (OPENBLAS_NUM_THREADS=1): at these matrix sizes extra BLAS threads only add
synchronisation, and on a busy machine they cost 3-10x.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,256,4096", help="comma-separated batch sizes")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per case (best and median shown)")
    p.add_argument("--budget", type=float, default=0.3, help="target seconds per round")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads for numpy (sets env before import)")
    p.add_argument("--tf-threads", type=int, default=None,
                   help="TensorFlow intra- and inter-op threads (default: TensorFlow's own choice)")
    p.add_argument("--no-tf", action="store_true", help="numpy only (random weights; no TensorFlow needed)")
    return p.parse_args(argv)


ARGS = parse_args()
if ARGS.threads:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from models.stepmodel import StepModel  # noqa: E402


def time_calls(fn, calls_hint: int, rounds: int, budget: float):
    """(best, median) seconds per call of fn() over `rounds` rounds of N calls."""
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls_hint):
        fn()
    per = max((time.perf_counter() - t0) / calls_hint, 1e-7)
    n = max(1, int(budget / per))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return min(times), statistics.median(times)


def qa_keras_model():
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    return keras.Sequential([
        keras.Input((None, 5)),
        L.LSTM(32, return_sequences=True),
        L.LSTM(8, return_sequences=True),
        L.TimeDistributed(L.Dense(2, activation="sigmoid")),
    ], name="qa")


def qa_random_step_model():
    rng = np.random.default_rng(0)

    def r(*shape):
        return (rng.normal(size=shape) * 0.3).astype(np.float32)

    layers = [
        {"kind": "lstm", "name": "lstm", "units": 32, "activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True},
        {"kind": "lstm", "name": "lstm_1", "units": 8, "activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True},
        {"kind": "dense", "name": "dense", "units": 2, "activation": "sigmoid", "use_bias": True},
    ]
    w = {"0.kernel": r(5, 128), "0.recurrent_kernel": r(32, 128), "0.bias": r(128),
         "1.kernel": r(32, 32), "1.recurrent_kernel": r(8, 32), "1.bias": r(32),
         "2.kernel": r(8, 2), "2.bias": r(2)}
    return StepModel(layers, w, 5)


def conv_keras_model():
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    return keras.Sequential([keras.Input((None, 5))] + [
        L.Conv1D(32, 3, padding="causal", dilation_rate=d, activation="relu") for d in (1, 2, 4)
    ] + [L.Dense(2, activation="sigmoid")], name="tcn")


def m2o_keras_model():
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    return keras.Sequential([keras.Input((None, 5)), L.LSTM(32, return_sequences=True),
                             L.GlobalAveragePooling1D(), L.Dense(3, activation="softmax")], name="classifier")


def extra_random_step_models():
    """The causal-Conv1D and many-to-one models with random weights (no TensorFlow)."""
    rng = np.random.default_rng(0)

    def r(*shape):
        return (rng.normal(size=shape) * 0.3).astype(np.float32)

    conv = [{"kind": "conv1d_causal", "name": f"conv{i}", "filters": 32, "kernel_size": 3, "dilation_rate": d,
             "activation": "relu", "use_bias": True} for i, d in enumerate((1, 2, 4))]
    conv.append({"kind": "dense", "name": "dense", "units": 2, "activation": "sigmoid", "use_bias": True})
    cw = {"0.kernel": r(3, 5, 32), "0.bias": r(32), "1.kernel": r(3, 32, 32), "1.bias": r(32),
          "2.kernel": r(3, 32, 32), "2.bias": r(32), "3.kernel": r(32, 2), "3.bias": r(2)}
    m2o = [{"kind": "lstm", "name": "lstm", "units": 32, "activation": "tanh", "recurrent_activation": "sigmoid",
            "use_bias": True}, {"kind": "global_avg_pool", "name": "gap"},
           {"kind": "dense", "name": "dense", "units": 3, "activation": "softmax", "use_bias": True}]
    mw = {"0.kernel": r(5, 128), "0.recurrent_kernel": r(32, 128), "0.bias": r(128), "2.kernel": r(32, 3),
          "2.bias": r(3)}
    return StepModel(conv, cw, 5), StepModel(m2o, mw, 5, many_to_one=True)


def numpy_case(step_model, batch):
    x = np.random.default_rng(1).random((batch, step_model.feature_size), dtype=np.float32)
    holder = [step_model.initial_state(batch)]

    def call():
        _, holder[0] = step_model.step(x, holder[0])

    return call


def tf_function_case(keras_model, batch, jit=False):
    import tensorflow as tf

    cell1, cell2 = keras_model.layers[0].cell, keras_model.layers[1].cell
    dense = keras_model.layers[2].layer
    spec = tf.TensorSpec
    sig = [spec((None, 5), tf.float32), spec((None, 32), tf.float32), spec((None, 32), tf.float32),
           spec((None, 8), tf.float32), spec((None, 8), tf.float32)]

    @tf.function(input_signature=sig, jit_compile=jit, reduce_retracing=True)
    def step(x, h1, c1, h2, c2):
        y1, (h1, c1) = cell1(x, [h1, c1])
        y2, (h2, c2) = cell2(y1, [h2, c2])
        return dense(y2), h1, c1, h2, c2

    x = np.random.default_rng(1).random((batch, 5), dtype=np.float32)
    z32, z8 = np.zeros((batch, 32), np.float32), np.zeros((batch, 8), np.float32)
    holder = [(z32, z32, z8, z8)]

    def call():
        out = step(x, *holder[0])
        out = [t.numpy() for t in out]  # the serving loop needs numpy back
        holder[0] = tuple(out[1:])

    return call, step


def predict_on_batch_case(keras_model):
    import keras

    L = keras.layers
    stateful = keras.Sequential([
        keras.Input(batch_shape=(1, 1, 5)),
        L.LSTM(32, return_sequences=True, stateful=True),
        L.LSTM(8, return_sequences=True, stateful=True),
        L.TimeDistributed(L.Dense(2, activation="sigmoid")),
    ])
    stateful.set_weights(keras_model.get_weights())
    x = np.random.default_rng(1).random((1, 1, 5), dtype=np.float32)

    def call():
        stateful.predict_on_batch(x)

    return call, stateful


def check_agreement(keras_model, step_model, tf_step, stateful):
    """All three give the same outputs on one 40-step sequence (sanity check of the comparison)."""
    xs = np.random.default_rng(2).random((40, 5), dtype=np.float32)
    want = np.asarray(keras_model(xs[None]))[0]
    got, _ = step_model.run(xs)
    h1 = c1 = np.zeros((1, 32), np.float32)
    h2 = c2 = np.zeros((1, 8), np.float32)
    tf_out = []
    for x in xs:
        y, h1, c1, h2, c2 = tf_step(x[None], h1, c1, h2, c2)
        tf_out.append(y.numpy()[0])
    for layer in stateful.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()
    pob = np.array([stateful.predict_on_batch(x[None, None])[0, 0] for x in xs])
    return (float(np.abs(got - want).max()), float(np.abs(np.array(tf_out) - want).max()),
            float(np.abs(pob - want).max()))


def main() -> int:
    batches = [int(b) for b in ARGS.batches.split(",") if b.strip()]
    rows = []
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    if ARGS.no_tf:
        step_model = qa_random_step_model()
        conv_model, m2o_model = extra_random_step_models()
        keras_model = None
    else:
        import keras
        import tensorflow as tf

        from models.convert import convert_model

        if ARGS.tf_threads:
            tf.config.threading.set_intra_op_parallelism_threads(ARGS.tf_threads)
            tf.config.threading.set_inter_op_parallelism_threads(ARGS.tf_threads)
        print(f"tensorflow {tf.__version__}, keras {keras.__version__}, TF intra-op threads "
              f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
        keras_model = qa_keras_model()
        step_model = convert_model(keras_model)
        conv_model, m2o_model = convert_model(conv_keras_model()), convert_model(m2o_keras_model())
    print(f"model: {step_model!r}")
    print(f"causal-Conv1D model: {conv_model!r}")
    print(f"many-to-one model: {m2o_model!r}")

    def add(method, batch, fn, calls_hint):
        best, med = time_calls(fn, calls_hint, ARGS.rounds, ARGS.budget)
        rows.append((method, batch, best * 1e6, med * 1e6, batch / best))

    for b in batches:
        add("numpy StepModel.step", b, numpy_case(step_model, b), max(2, 2000 // b))
    for b in batches:
        add("numpy step, causal-Conv1D (TCN) model", b, numpy_case(conv_model, b), max(2, 2000 // b))
    for b in batches:
        add("numpy step, many-to-one classifier", b, numpy_case(m2o_model, b), max(2, 2000 // b))
    if keras_model is not None:
        tf_step = None
        for b in batches:
            fn, tf_step = tf_function_case(keras_model, b)
            add("tf.function step (state in/out)", b, fn, max(2, 200 // b))
        for b in batches:
            fn, _ = tf_function_case(keras_model, b, jit=True)
            add("tf.function step, XLA (jit_compile)", b, fn, max(2, 200 // b))
        pob, stateful = predict_on_batch_case(keras_model)
        add("Keras predict_on_batch (stateful, T=1)", 1, pob, 20)
        d_np, d_tf, d_pob = check_agreement(keras_model, step_model, tf_step, stateful)
        print(f"agreement with eager model(x) on a 40-step sequence: numpy {d_np:.1e}, "
              f"tf.function {d_tf:.1e}, predict_on_batch {d_pob:.1e} (max abs diff)")

    print()
    print(f"| {'method':40s} | {'batch':>5s} | {'µs/call (best)':>14s} | {'µs/call (median)':>16s} | "
          f"{'stream-steps/s':>14s} |")
    print(f"|{'-' * 42}|{'-' * 6}:|{'-' * 15}:|{'-' * 17}:|{'-' * 15}:|")
    for method, b, best, med, rate in rows:
        print(f"| {method:40s} | {b:5d} | {best:14.1f} | {med:16.1f} | {rate:14,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

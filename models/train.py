"""Training on variable-length sequences: `train(...)`, `train_synthetic(...)` and the Q&A's own recipe.

Defaults (measured on 2 shared CPU cores; see README): 4000 synthetic sequences of lengths 10..100,
batches of 64 bucketed by length, 8 epochs, Adam 0.01 decayed by a cosine to 5% -- under a minute of
training, and >= 0.97 per-step accuracy on fresh sequences of lengths 10..1000.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from models.data import SeqRecord, length_stats, synthetic_sequences
from models.errors import DataError, ModelError


def parse_units(text: str | Sequence[int]) -> tuple[int, ...]:
    """'32,8' -> (32, 8); refuses empty, non-integer or non-positive entries with a ModelError."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            units = tuple(int(p) for p in parts)
        except ValueError:
            raise ModelError(f"units {text!r} must be comma-separated positive integers, e.g. 32,8") from None
    else:
        units = tuple(int(u) for u in text)
    if not units or any(u < 1 for u in units):
        raise ModelError(f"units {text!r} must be one or more positive integers, e.g. 32,8")
    return units


@dataclass
class TrainConfig:
    """How to build and train the model. Defaults reproduce the Q&A architecture and train it well."""

    cell: str = "lstm"
    units: tuple[int, ...] = (32, 8)
    activation: str = "sigmoid"
    loss: str | None = None  # None: categorical_crossentropy for >1 outputs (see architectures)
    masking: bool = True  # False: no Masking layer; pads get zero sample weights instead
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 0.01
    final_lr_fraction: float | None = 0.05  # cosine decay to this fraction of the rate; None: constant
    seed: int = 0
    verbose: int | str = "auto"  # Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch


@dataclass
class SyntheticConfig:
    """The Q&A task as training data, and the long-sequence check after training."""

    sequences: int = 4000
    min_len: int = 10
    max_len: int = 100
    eval_sequences: int = 200
    eval_min_len: int = 10
    eval_max_len: int = 1000


@dataclass
class TrainResult:
    model: object
    manifest: dict
    history: dict = field(default_factory=dict)


def _check_records(records: Sequence[SeqRecord]) -> tuple[int, int]:
    if not records:
        raise DataError("no training sequences")
    f, o = None, None
    for i, r in enumerate(records):
        if r.targets is None:
            raise DataError(f"sequence {r.id!r} (#{i}) has no targets; training needs targets for every step")
        shape_x, shape_y = r.features.shape, r.targets.shape
        f, o = f or shape_x[1], o or shape_y[1]
        if shape_x[1] != f or shape_y[1] != o or shape_x[0] != shape_y[0] or shape_x[0] < 1:
            raise DataError(f"sequence {r.id!r} (#{i}): features {shape_x} and targets {shape_y} do not match "
                            f"the others' ({f} features, {o} targets) or each other")
    return int(f), int(o)


def _learning_rate(config: TrainConfig, steps: int):
    import keras

    if not config.final_lr_fraction or config.final_lr_fraction >= 1:
        return config.learning_rate
    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(steps, 1), alpha=config.final_lr_fraction
    )


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(
    records: Sequence[SeqRecord],
    config: TrainConfig | None = None,
    out_dir=None,
    eval_sets: dict[str, Sequence[SeqRecord]] | None = None,
    data_info: dict | None = None,
) -> TrainResult:
    """Build the model from `config`, fit it on `records` (bucketed, post-padded), evaluate, save.

    `eval_sets`: name -> sequences with targets; each gives `eval_accuracy_<name>` in the manifest.
    `out_dir`: when given, DIR/model.keras and DIR/manifest.json are written.
    """
    from models.architectures import build_model
    from models.batching import BucketedBatches
    from models.manifest import build_manifest, save_run
    from models.predict import Forward, evaluate

    config = config or TrainConfig()
    if config.epochs < 1 or config.batch_size < 1 or not config.learning_rate > 0:
        raise DataError(f"epochs, batch size and learning rate must be positive, got {config.epochs}, "
                        f"{config.batch_size}, {config.learning_rate}")
    feature_size, output_size = _check_records(records)
    for name, eval_records in (eval_sets or {}).items():
        if _check_records(eval_records) != (feature_size, output_size):
            raise DataError(f"{name} sequences have {_check_records(eval_records)} (features, targets) per step; "
                            f"the training data has ({feature_size}, {output_size})")
    batches = BucketedBatches(records, config.batch_size, masking=config.masking, seed=config.seed)
    lr = _learning_rate(config, config.epochs * len(batches))  # exactly the number of optimizer steps
    model = build_model(feature_size, output_size, cell=config.cell, units=config.units,
                        activation=config.activation, loss=config.loss, masking=config.masking,
                        learning_rate=lr, seed=config.seed)
    stats = length_stats(records)
    _log(f"training {model.name} on {stats['count']} sequences (lengths {stats['min']}..{stats['max']}, "
         f"mean {stats['mean']}): {len(batches)} length-bucketed batches of <= {config.batch_size} per epoch, "
         f"~{batches.waste_pct:.1f}% padded steps (pad-to-max would be {batches.pad_to_max_waste_pct:.1f}%)")
    if config.masking:
        zero_steps = sum(int((r.features == 0).all(axis=1).sum()) for r in records)
        if zero_steps:
            _log(f"warning: {zero_steps} real steps have every feature == 0; the Masking layer treats them as "
                 "padding (state kept, no loss). If zeros are meaningful, train with masking=False (--no-masking)")
    steps_per_epoch = len(batches)  # the first pass's batch count; see BucketedBatches.as_tf_dataset
    started = time.monotonic()
    history = model.fit(batches.as_tf_dataset(), steps_per_epoch=steps_per_epoch, epochs=config.epochs,
                        verbose=config.verbose, shuffle=False)  # BucketedBatches shuffles every pass
    train_seconds = time.monotonic() - started

    forward = Forward(model)
    evals = {}
    for name, eval_records in (eval_sets or {}).items():
        evals[f"eval_accuracy_{name}"] = round(evaluate(forward, eval_records), 5)
    final = {k: round(float(v[-1]), 6) for k, v in history.history.items()}
    training = asdict(config)
    training.update(loss=model.loss if isinstance(model.loss, str) else str(model.loss),
                    batches_per_epoch=steps_per_epoch, seconds=round(train_seconds, 2))
    training.pop("verbose", None)
    manifest = build_manifest(
        model,
        data=data_info or {"source": "in-memory"},
        lengths=stats,
        padding={"waste_pct": round(batches.waste_pct, 2),
                 "pad_to_max_waste_pct": round(batches.pad_to_max_waste_pct, 2),
                 "scheme": "post-padding, length-bucketed batches reshuffled every epoch",
                 "pads_excluded_by": "Masking layer" if config.masking else "zero sample weights"},
        training=training,
        metrics=final,
        **evals,
    )
    _log(f"trained in {train_seconds:.1f}s: " + ", ".join(f"{k} {v:g}" for k, v in final.items())
         + "".join(f", {k} {v:.4f}" for k, v in evals.items())
         + f"; padded steps {batches.waste_pct:.1f}% (pad-to-max {batches.pad_to_max_waste_pct:.1f}%)")
    if out_dir is not None:
        save_run(model, manifest, out_dir)
    return TrainResult(model=model, manifest=manifest, history=dict(history.history))


def train_synthetic(
    config: TrainConfig | None = None,
    synthetic: SyntheticConfig | None = None,
    out_dir=None,
    extra_eval_sets: dict[str, Sequence[SeqRecord]] | None = None,
) -> TrainResult:
    """Train on the Q&A task and record accuracy on fresh, longer sequences (`eval_accuracy_len_A_B`)."""
    config = config or TrainConfig()
    s = synthetic or SyntheticConfig()
    records = synthetic_sequences(s.sequences, s.min_len, s.max_len, seed=np.random.default_rng([config.seed, 0]))
    eval_sets = {}
    if s.eval_sequences > 0:
        fresh = synthetic_sequences(s.eval_sequences, s.eval_min_len, s.eval_max_len,
                                    seed=np.random.default_rng([config.seed, 1]))
        eval_sets[f"len_{s.eval_min_len}_{s.eval_max_len}"] = fresh
    eval_sets.update(extra_eval_sets or {})
    info = {"source": "synthetic", "task": "x[t,0] + sum(x[t-i,i], i=1..4) > 2.5, one-hot",
            **{k: v for k, v in asdict(s).items()}}
    return train(records, config, out_dir=out_dir, eval_sets=eval_sets, data_info=info)


# --------------------------------------------------------------------------- the Q&A's recipe on Keras 3


def qa_generator(batch_size: int = 1000, min_len: int = 10, max_len: int = 100, seed=None):
    """The Q&A's `train_generator`: endless batches, one random length per batch (min_len..max_len-1)."""
    import keras

    rng = np.random.default_rng(seed)
    while True:
        sequence_length = int(rng.integers(min_len, max_len))  # like np.random.randint(10, 100)
        x_train = rng.random((batch_size, sequence_length, 5), dtype=np.float32)
        y_train = x_train[:, :, 0].copy()  # y_train depends on the past 5 timesteps of x
        for i in range(1, 5):
            y_train[:, i:] += x_train[:, :-i, i]
        y_train = keras.utils.to_categorical(y_train > 2.5, num_classes=2)
        yield x_train, y_train


def qa_model():
    """The Q&A's model as written (TimeDistributed head included), with Keras 3's Input instead of input_shape=."""
    import keras
    from keras.layers import LSTM, Dense, TimeDistributed

    return keras.Sequential([
        keras.Input(shape=(None, 5)),
        LSTM(32, return_sequences=True),
        LSTM(8, return_sequences=True),
        TimeDistributed(Dense(2, activation="sigmoid")),
    ])


def qa_recipe(steps_per_epoch: int = 30, epochs: int = 10, batch_size: int = 1000,
              min_len: int = 10, max_len: int = 100, seed=None, verbose="auto"):
    """The Q&A's training code, working on current Keras. Returns (model, history).

    Two changes make it work: (1) `fit_generator` is gone, so `model.fit(data, steps_per_epoch=...)`,
    fed through a `tf.data.Dataset` whose signature says (batch, time) are dynamic -- Keras guesses a
    plain generator's shapes from its first two batches, so two equal first lengths (1 run in 90) pin
    the time axis and the next length crashes; (2) `fix_time_distributed` swaps TimeDistributed(Dense)
    for the Dense itself, because TimeDistributed breaks on the second length in a compiled step.
    """
    import tensorflow as tf

    from models.compat import fix_time_distributed

    if seed is not None:
        import keras

        keras.utils.set_random_seed(seed)
    model = fix_time_distributed(qa_model())
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    signature = (tf.TensorSpec((None, None, 5), tf.float32), tf.TensorSpec((None, None, 2), tf.float32))
    data = tf.data.Dataset.from_generator(lambda: qa_generator(batch_size, min_len, max_len, seed),
                                          output_signature=signature)
    history = model.fit(data, steps_per_epoch=steps_per_epoch, epochs=epochs, verbose=verbose, shuffle=False)
    return model, history

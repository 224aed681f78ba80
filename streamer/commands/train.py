"""`streamer train (--synthetic | --data FILE.jsonl) --out DIR`: train a Keras RNN on variable-length sequences."""

from __future__ import annotations

import argparse
import os

from streamer.commands._options import int_at_least, positive_int as _positive_int

# Flags that only make sense with --synthetic (defaults filled in run()).
_SYNTHETIC_DEFAULTS = {"sequences": 4000, "min_len": 10, "max_len": 100, "eval_sequences": 200, "eval_max_len": 1000}


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a Keras RNN on variable-length sequences (synthetic Q&A task or your JSONL)",
        description="Train an RNN (default: the Q&A's LSTM 32 -> LSTM 8 -> per-step Dense 2) on sequences of "
                    "any length, in length-bucketed, post-padded, masked batches. Writes DIR/model.keras and "
                    "DIR/manifest.json (sizes, layers, lengths seen, metrics, padding waste, version).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true",
                     help="train on the Q&A task: 5 uniform features, target x[t,0]+sum(x[t-i,i], i=1..4) > 2.5")
    src.add_argument("--data", metavar="FILE.jsonl",
                     help='one sequence per line: {"id": ..., "features": [[...], ...], "targets": [[...], ...]}')
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    p.add_argument("--validation", metavar="FILE.jsonl",
                   help="sequences with targets to evaluate after training (eval_accuracy_validation)")
    m = p.add_argument_group("model")
    m.add_argument("--cell", choices=("lstm", "gru", "simplernn"), default="lstm", help="recurrent cell (default lstm)")
    m.add_argument("--units", default="32,8", metavar="N,N,...", help="units per RNN layer (default 32,8)")
    m.add_argument("--activation", default="sigmoid",
                   help="output activation (default sigmoid, like the Q&A; softmax, linear, ...)")
    m.add_argument("--loss", default=None,
                   help="Keras loss name (default categorical_crossentropy for >1 outputs, "
                        "binary_crossentropy for 1, mse for a linear output)")
    m.add_argument("--no-masking", action="store_true",
                   help="no Masking layer; pads get zero sample weights instead (same loss and gradients)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=_positive_int, default=8, help="default 8")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="sequences per batch (default 64)")
    t.add_argument("--learning-rate", type=_positive_float, default=0.01, help="Adam learning rate (default 0.01)")
    t.add_argument("--constant-lr", action="store_true",
                   help="keep the learning rate constant (default: cosine decay to 5%% of it)")
    t.add_argument("--seed", type=int, default=0, help="seed for data, weights and batch order (default 0)")
    t.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                   help="Keras progress: 0 none, 1 progress bar, 2 one line per epoch (default: 1 on a terminal, else 2)")
    s = p.add_argument_group("synthetic data (--synthetic only)")
    s.add_argument("--sequences", type=_positive_int, help="training sequences (default 4000)")
    s.add_argument("--min-len", type=_positive_int, help="shortest training sequence (default 10)")
    s.add_argument("--max-len", type=_positive_int, help="longest training sequence (default 100)")
    s.add_argument("--eval-sequences", type=int_at_least(0),
                   help="fresh sequences of lengths 10..--eval-max-len to check after training (default 200; 0: skip)")
    s.add_argument("--eval-max-len", type=_positive_int, help="longest evaluation sequence (default 1000)")
    p.set_defaults(func=run)


def run(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr
    import sys

    from streamer.errors import UserError

    synthetic_only = [k for k in _SYNTHETIC_DEFAULTS if getattr(args, k) is not None]
    if args.data and synthetic_only:
        flags = ", ".join("--" + k.replace("_", "-") for k in synthetic_only)
        raise UserError(f"{flags} only apply to --synthetic; with --data the sequences come from the file")
    for key, default in _SYNTHETIC_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.min_len > args.max_len:
        raise UserError(f"--min-len {args.min_len} is above --max-len {args.max_len}")
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} exists and is not a directory; give a directory path")
    if args.data and not os.path.isfile(args.data):
        raise UserError(f"--data {args.data}: no such file; expected a JSONL file with one sequence per line")

    # Read and check everything that needs no TensorFlow first (fast, clean errors).
    from models.data import read_jsonl
    from models.train import SyntheticConfig, TrainConfig, parse_units, train, train_synthetic

    units = parse_units(args.units)
    records = read_jsonl(args.data, targets="required") if args.data else None
    eval_sets = {}
    if args.validation:
        eval_sets["validation"] = read_jsonl(args.validation, targets="required")
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    config = TrainConfig(cell=args.cell, units=units, activation=args.activation,
                         loss=args.loss, masking=not args.no_masking, epochs=args.epochs,
                         batch_size=args.batch_size, learning_rate=args.learning_rate,
                         final_lr_fraction=None if args.constant_lr else 0.05, seed=args.seed, verbose=verbose)
    if args.synthetic:
        synthetic = SyntheticConfig(sequences=args.sequences, min_len=args.min_len, max_len=args.max_len,
                                    eval_sequences=args.eval_sequences, eval_max_len=args.eval_max_len,
                                    eval_min_len=min(10, args.eval_max_len))
        result = train_synthetic(config, synthetic, out_dir=out, extra_eval_sets=eval_sets)
    else:
        result = train(records, config, out_dir=out, eval_sets=eval_sets,
                       data_info={"source": "jsonl", "path": os.path.abspath(args.data)})
    man = result.manifest
    evals = "".join(f", {k} {v:.4f}" for k, v in man.items() if k.startswith("eval_accuracy_"))
    print(f"wrote {os.path.join(out, 'model.keras')} and manifest.json: version {man['version']}, "
          f"{man['feature_size']} features -> {man['output_size']} outputs{evals}")
    return 0


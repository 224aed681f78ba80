"""`streamer predict --model PATH --input seqs.jsonl --output preds.jsonl`: offline per-step predictions."""

from __future__ import annotations

import os

from streamer.commands._options import positive_int as _positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict every step of variable-length sequences offline (JSONL in, JSONL out)",
        description='Read one sequence per line ({"id": ..., "features": [[...], ...]}, or a flat list of '
                    "integer token ids for a model that starts with an Embedding; targets optional), "
                    'write one line per sequence ({"id": ..., "predictions": [[...], ...]}, one row per step, '
                    'in input order; {"id": ..., "prediction": [...]} for a many-to-one model; ids default to '
                    "the 0-based line number). Sequences of any length are bucketed and post-padded; models "
                    "trained with a fixed batch size or length, stateful=True or unroll=True are rebuilt to "
                    "run on any length with the same weights. If every input line has targets, the accuracy "
                    "is printed on stderr.",
    )
    p.add_argument("--model", required=True, metavar="PATH",
                   help="a .keras or .h5 model file or a `streamer train --out` directory (loaded with "
                        "safe_mode=True)")
    p.add_argument("--input", required=True, metavar="FILE", help="JSONL sequences; - reads stdin")
    p.add_argument("--output", required=True, metavar="FILE", help="JSONL predictions; - writes stdout")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="sequences per padded batch (default 64)")
    p.set_defaults(func=run)


def run(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr
    import io
    import sys

    from streamer.errors import UserError

    if args.input != "-" and not os.path.isfile(args.input):
        raise UserError(f"--input {args.input}: no such file; expected JSONL sequences (or - for stdin)")
    if args.output != "-":
        parent = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(parent):
            raise UserError(f"--output {args.output}: directory {parent} does not exist")
        if os.path.isdir(args.output):
            raise UserError(f"--output {args.output} is a directory; give a file path (or - for stdout)")

    from models.data import read_jsonl
    from models.predict import resolve_keras_path

    # Everything that can be checked without TensorFlow is checked first (fast, clean errors).
    resolve_keras_path(args.model)
    records = read_jsonl(sys.stdin if args.input == "-" else args.input, targets="optional")

    from models.predict import (Forward, atomic_write_text, load_keras_model, predict_sequences, step_accuracy,
                                write_predictions)

    model = load_keras_model(args.model)
    forward = Forward(model)
    _check_inputs(records, forward.io, "<stdin>" if args.input == "-" else os.path.basename(args.input))
    preds = predict_sequences(forward, records, batch_size=args.batch_size)
    buffer = io.StringIO()
    write_predictions(records, preds, buffer)
    if args.output == "-":
        sys.stdout.write(buffer.getvalue())
        sys.stdout.flush()
    else:
        atomic_write_text(args.output, buffer.getvalue())
    steps = sum(len(r.features) for r in records)
    note = ""
    if all(r.targets is not None and r.targets.size == p.size and r.targets.shape[-1] == p.shape[-1]
           for r, p in zip(records, preds)):
        what = "accuracy" if forward.io.many_to_one else "per-step accuracy"
        note = f", {what} {step_accuracy(records, preds):.4f}"
    print(f"predicted {len(records)} sequences ({steps} steps){note}", file=sys.stderr)
    return 0


def _check_inputs(records, io, name: str) -> None:
    """One clear line when the file's sequences are not what the model takes (the reader made lines agree)."""
    from models.errors import DataError

    features = records[0].features
    tokens = features.ndim == 1
    if io.input_kind == "tokens" and not tokens:
        raise DataError(f"{name}: sequences have {features.shape[1]} features per step but the model takes "
                        'integer token ids (an Embedding first): give "features" as a flat list of integers')
    if io.input_kind == "float" and tokens:
        raise DataError(f"{name}: sequences are flat lists of token ids but the model takes "
                        f"{io.feature_size} features per step (a list of {io.feature_size} numbers per step)")
    if io.input_kind == "float" and features.shape[1] != io.feature_size:
        raise DataError(f"{name}: sequences have {features.shape[1]} features per step but the model expects "
                        f"{io.feature_size}")

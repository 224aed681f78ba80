"""`streamer predict --model PATH --input seqs.jsonl --output preds.jsonl`: offline per-step predictions."""

from __future__ import annotations

import os

from streamer.commands._options import positive_int as _positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict every step of variable-length sequences offline (JSONL in, JSONL out)",
        description='Read one sequence per line ({"id": ..., "features": [[...], ...]}, targets optional), '
                    'write one line per sequence ({"id": ..., "predictions": [[...], ...]}, one row per step, '
                    "in input order; ids default to the 0-based line number). Sequences of any length are "
                    "bucketed and post-padded; if every input line has targets, the per-step accuracy is "
                    "printed on stderr.",
    )
    p.add_argument("--model", required=True, metavar="PATH",
                   help="a .keras file or a `streamer train --out` directory (loaded with safe_mode=True)")
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

    from models.architectures import model_io_sizes
    from models.errors import DataError
    from models.predict import (Forward, atomic_write_text, load_keras_model, predict_sequences, step_accuracy,
                                write_predictions)

    model = load_keras_model(args.model)
    feature_size, output_size = model_io_sizes(model)
    width = records[0].features.shape[1]  # the reader made every line agree
    if width != feature_size:
        name = "<stdin>" if args.input == "-" else os.path.basename(args.input)
        raise DataError(f"{name}: sequences have {width} features per step but the model expects {feature_size}")
    forward = Forward(model)
    preds = predict_sequences(forward, records, batch_size=args.batch_size)
    buffer = io.StringIO()
    write_predictions(records, preds, buffer)
    if args.output == "-":
        sys.stdout.write(buffer.getvalue())
        sys.stdout.flush()
    else:
        atomic_write_text(args.output, buffer.getvalue())
    steps = sum(len(p) for p in preds)
    note = ""
    if all(r.targets is not None and r.targets.shape[1] == output_size for r in records):
        note = f", per-step accuracy {step_accuracy(records, preds):.4f}"
    print(f"predicted {len(records)} sequences ({steps} steps){note}", file=sys.stderr)
    return 0

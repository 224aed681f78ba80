"""`streamer replay`: run the serving engine over a JSONL file of events (no broker needed).

The same engine the Kafka transport runs, fed in polls of `--batch-lines` lines. Predictions go to
`--output`, dead letters to `--dlq` (or are only counted), a summary to stderr.
"""

from __future__ import annotations

import os
import sys
import time

from streamer.commands._options import add_engine_options, add_metrics_options, positive_int

PROG = "streamer replay"


def register(subparsers) -> None:
    from streamer.cli import env_default

    p = subparsers.add_parser(
        "replay",
        help="run the streaming engine over a JSONL file of events (predictions out as JSONL)",
        description="Feed a JSONL file of events (one JSON object per line: stream_id, step, features, "
                    "optional reset/end/ts) through the streaming engine, in polls of --batch-lines lines, "
                    "exactly as `streamer serve` does from Kafka. Writes one prediction record per event; "
                    "malformed events become dead letters and never stop the run.",
    )
    p.add_argument("--model", required=True, metavar="PATH",
                   help="a converted step-model directory (fastest: no TensorFlow), a `streamer train` "
                        "directory or a .keras/.h5 model file")
    p.add_argument("--input", default="-", metavar="PATH", help="events, JSONL; - for stdin (default)")
    p.add_argument("--output", default="-", metavar="PATH", help="predictions, JSONL; - for stdout (default)")
    p.add_argument("--dlq", metavar="PATH",
                   help="dead letters, JSONL (error, detail, source {file, line}, payload); default: only "
                        "counted in the summary")
    p.add_argument("--batch-lines", type=positive_int, metavar="N",
                   default=env_default("batch_lines", 1000, positive_int),
                   help="lines per poll (default 1000) [STREAMER_BATCH_LINES]")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    add_engine_options(p)
    add_metrics_options(p, default_port=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from prometheus_client import CollectorRegistry

    from models.serving import load_step_model
    from streamer import gc_tuning
    from streamer.commands._options import engine_config, start_metrics_server
    from streamer.engine import Engine, run as run_engine
    from streamer.errors import UserError
    from streamer.metrics import Metrics
    from streamer.transports.jsonl import JsonlSink, JsonlSource

    if args.dlq == "-":
        raise UserError("--dlq needs a file path (- is not supported: stdout carries the predictions)")
    named = [p for p in (args.input, args.output, args.dlq) if p not in (None, "-", os.devnull)]
    if len(set(named)) != len(named):
        raise UserError("--input, --output and --dlq must be different files")
    started = time.perf_counter()
    metrics = Metrics(CollectorRegistry())
    server = None
    if args.metrics_port is not None:
        server = start_metrics_server(metrics.registry, args.metrics_host, args.metrics_port, PROG)
    files = []
    try:
        model = load_step_model(args.model)
        engine = Engine(model, engine_config(args), metrics)
        source_stream = sys.stdin.buffer if args.input == "-" else _open(args.input, "rb", files)
        out = sys.stdout if args.output == "-" else _open(args.output, "w", files)
        dlq = None if args.dlq is None else _open(args.dlq, "w", files)
        name = "<stdin>" if args.input == "-" else args.input
        source = JsonlSource(source_stream, name, batch_lines=args.batch_lines,
                             max_message_bytes=args.max_message_bytes)
        sink = JsonlSink(out, dlq)
        if server is not None:
            server.ready.set()
        gc_tuning.for_serving()
        t0 = time.perf_counter()
        totals = run_engine(engine, source.polls(), sink)
        sink.close()
        elapsed = time.perf_counter() - t0
    finally:
        for f in files:
            f.close()
        if server is not None:
            server.close()
    if not args.quiet:
        print(_summary(totals, engine, metrics, elapsed, time.perf_counter() - started, args.dlq),
              file=sys.stderr)
    return 0


def _open(path: str, mode: str, files: list):
    from streamer.errors import UserError

    try:
        f = open(path, mode) if "b" in mode else open(path, mode, encoding="utf-8", newline="\n")
    except OSError as exc:
        what = "read" if "r" in mode else "write"
        raise UserError(f"cannot {what} {path}: {exc.strerror or exc}") from None
    files.append(f)
    return f


def _summary(totals: dict, engine, metrics, elapsed: float, wall: float, dlq: str | None) -> str:
    from streamer import schema

    reg = metrics.registry
    value = lambda name, **labels: int(reg.get_sample_value(name, labels) or 0)  # noqa: E731
    steps = value("streamer_steps_total", outcome="applied")
    rate = totals["messages"] / elapsed if elapsed > 0 else 0.0
    line = (f"{PROG}: {totals['messages']} events -> {totals['records']} records, {steps} step predictions; "
            f"{value('streamer_streams_started_total')} streams; "
            f"{value('streamer_steps_total', outcome='duplicate')} duplicate steps, "
            f"{value('streamer_step_gaps_total')} gaps; {totals['dead_letters']} dead letters; "
            f"{elapsed:.2f} s engine ({rate:,.0f} events/s), {wall:.2f} s in all; model {engine.model.version}")
    if totals["dead_letters"]:
        reasons = {c: value("streamer_dead_letters_total", reason=c) for c in schema.ERROR_CODES}
        line += "\n" + f"{PROG}: dead letters by reason: " + ", ".join(
            f"{c} {n}" for c, n in reasons.items() if n)
        if dlq is None:
            line += " (keep them with --dlq PATH)"
    return line

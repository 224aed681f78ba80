"""`streamer demo`: the whole product on the embedded default, no broker needed.

Trains the default synthetic (Q&A task) model, or reuses the one cached in --model-dir; converts it to
a step model; sends a few hundred concurrent variable-length streams through the engine in-process,
interleaved the way a topic would deliver them (random order across streams, in order within each, some
chunks); and checks the streamed predictions against the task's labels and against the Keras model's
offline full-sequence predictions.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from streamer.commands._options import (add_engine_options, add_metrics_options, positive_float, positive_int)

PROG = "streamer demo"
DEFAULT_MODEL_DIR = "runs/demo-model"
DEFAULT_METRICS_PORT = 9108
PARITY_TOLERANCE = 1e-5


def register(subparsers) -> None:
    from streamer.cli import env_default

    p = subparsers.add_parser(
        "demo",
        help="train (or reuse) the default model and stream a few hundred sequences through the engine",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--model-dir", default=env_default("demo_model_dir", DEFAULT_MODEL_DIR), metavar="DIR",
                   help=f"cache of the trained model (model.keras + manifest.json; the converted step model "
                        f"goes to DIR/step); default {DEFAULT_MODEL_DIR} [STREAMER_DEMO_MODEL_DIR]")
    p.add_argument("--retrain", action="store_true", help="train again even if --model-dir holds a model")
    p.add_argument("--streams", type=positive_int, default=300, metavar="N", help="concurrent streams (default 300)")
    p.add_argument("--min-len", type=positive_int, default=10, metavar="T", help="shortest stream (default 10)")
    p.add_argument("--max-len", type=positive_int, default=300, metavar="T", help="longest stream (default 300)")
    p.add_argument("--chunk-prob", type=float, default=0.1, metavar="P",
                   help="probability that an event carries a chunk of 2..8 steps (default 0.1)")
    p.add_argument("--poll-size", type=positive_int, default=256, metavar="N",
                   help="events per poll handed to the engine (default 256)")
    p.add_argument("--rate", type=positive_float, metavar="EVENTS_PER_S",
                   help="pace the arrivals (default: as fast as the engine goes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the streams and their arrival order")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="training epochs (default: the trainer's)")
    p.add_argument("--train-sequences", type=positive_int, metavar="N",
                   help="synthetic training sequences (default: the trainer's)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    p.add_argument("--keep-serving", action="store_true",
                   help="after the summary, keep serving /metrics until Ctrl-C")
    add_engine_options(p)
    add_metrics_options(p, default_port=DEFAULT_METRICS_PORT)
    p.set_defaults(func=run)


def run(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr
    from prometheus_client import CollectorRegistry

    from streamer.commands._options import engine_config, start_metrics_server
    from streamer.errors import UserError
    from streamer.metrics import Metrics

    if args.min_len > args.max_len:
        raise UserError(f"--min-len {args.min_len} is above --max-len {args.max_len}; give min <= max")
    if not 0 <= args.chunk_prob <= 1:
        raise UserError(f"--chunk-prob must be between 0 and 1, got {args.chunk_prob}")
    config = engine_config(args)
    metrics = Metrics(CollectorRegistry())
    server = None
    if not args.no_metrics:
        server = start_metrics_server(metrics.registry, args.metrics_host, args.metrics_port, PROG, required=False)
    try:
        keras_model, step_model = _model(args)
        if server is not None:
            server.ready.set()
        report = _stream(args, config, metrics, keras_model, step_model)
        print(_summary(report, step_model, server))
        if args.keep_serving and server is not None:
            print(f"{PROG}: serving {server.url}/metrics until Ctrl-C", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
    finally:
        if server is not None:
            server.close()
    return 0 if report["parity"] <= PARITY_TOLERANCE else 1


def _model(args):
    """(Keras model, StepModel): trained now or loaded from the cache, converted, saved to DIR/step."""
    from models.convert import convert_model
    from models.serving import load_keras_model

    model_dir = Path(args.model_dir)
    keras_file = model_dir / "model.keras"
    if keras_file.is_file() and not args.retrain:
        _say(f"reusing the trained model in {model_dir} (--retrain trains a new one)")
        keras_model = load_keras_model(keras_file)
    else:
        from models.train import SyntheticConfig, TrainConfig, train_synthetic

        config = TrainConfig(verbose=2 if sys.stderr.isatty() else 0)
        if args.epochs:
            config.epochs = args.epochs
        synthetic = SyntheticConfig()
        if args.train_sequences:
            synthetic.sequences = args.train_sequences
        _say(f"training the default synthetic model into {model_dir} (cached for the next run)")
        keras_model = train_synthetic(config, synthetic, out_dir=model_dir).model
    step_model = convert_model(keras_model)
    step_model.source.setdefault("keras_file", str(keras_file))
    step_model.save(model_dir / "step")
    _say(f"converted: {step_model!r} -> {model_dir / 'step'}")
    return keras_model, step_model


def arrivals(records, rng, chunk_prob: float, ts_ms: int) -> tuple[list[bytes], int]:
    """JSON events for every record (stream): random order across streams, in order within each.

    Each stream's events carry `step`, sometimes a chunk of 2..8 steps, and `end` on the last one.
    Returns (messages, number of chunks). `rng` is a numpy Generator.
    """
    import numpy as np

    per_stream = []
    chunks = 0
    for r in records:
        x = r.features
        t, items = 0, []
        while t < len(x):
            k = min(int(rng.integers(2, 9)) if rng.random() < chunk_prob else 1, len(x) - t)
            obj = {"stream_id": f"demo-{r.id}", "step": t,
                   "features": x[t:t + k].tolist() if k > 1 else x[t].tolist(), "ts": ts_ms}
            if t + k == len(x):
                obj["end"] = True
            chunks += k > 1
            items.append(json.dumps(obj).encode())
            t += k
        per_stream.append(items)
    order = np.repeat(np.arange(len(per_stream)), [len(p) for p in per_stream])
    rng.shuffle(order)
    cursor = [0] * len(per_stream)
    out = []
    for s in order.tolist():
        out.append(per_stream[s][cursor[s]])
        cursor[s] += 1
    return out, chunks


def _stream(args, config, metrics, keras_model, step_model) -> dict:
    import numpy as np

    from models.data import synthetic_sequences
    from models.predict import predict_sequences
    from streamer.engine import Engine
    from streamer.transports.testing import TestingSource

    rng = np.random.default_rng(args.seed)
    records = synthetic_sequences(args.streams, args.min_len, args.max_len,
                                  feature_size=step_model.feature_size, seed=rng)
    messages, chunks = arrivals(records, rng, args.chunk_prob, int(time.time() * 1000))
    index = {f"demo-{r.id}": i for i, r in enumerate(records)}
    streamed = [np.full((len(r), step_model.output_size), np.nan, np.float32) for r in records]
    total_steps = sum(len(r) for r in records)
    engine = Engine(step_model, config, metrics)
    progress = _Progress(len(messages), total_steps) if sys.stderr.isatty() else None
    latencies, sizes = [], []
    done_steps = dead_letters = 0
    started = time.perf_counter()
    for poll in TestingSource(messages, batch_size=args.poll_size).polls():
        if args.rate:
            _pace(started, done_events=sum(sizes), rate=args.rate)
            poll.received = time.perf_counter()
        result = engine.process(poll)
        out = result.outputs
        starts, lengths, steps = out.start.tolist(), out.length.tolist(), out.steps.tolist()
        for r, sid in enumerate(out.stream_ids):
            a, n = starts[r], lengths[r]
            streamed[index[sid]][steps[r]:steps[r] + n] = out.predictions[a:a + n]
        done_steps += len(out.predictions)
        dead_letters += len(result.dead_letters)
        latencies.append(result.seconds)
        sizes.append(result.messages)
        if progress is not None:
            progress.update(sum(sizes), done_steps, len(engine.store), time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    if progress is not None:
        progress.close()
    _say("offline check: full-sequence predictions of the Keras model (models.predict.predict_sequences)")
    offline = predict_sequences(keras_model, [r.features for r in records])
    parity = float(np.max([np.max(np.abs(s - o)) for s, o in zip(streamed, offline)]))  # a missing step: NaN
    correct = sum(int((s.argmax(1) == r.targets.argmax(1)).sum()) for s, r in zip(streamed, records))
    per_event = np.repeat(latencies, sizes)
    return {
        "streams": len(records), "steps": total_steps, "events": len(messages), "polls": len(sizes),
        "predicted": done_steps, "seconds": elapsed, "accuracy": correct / total_steps,
        "parity": parity if not np.isnan(parity) else float("inf"),
        "p50": float(np.percentile(per_event, 50)), "p99": float(np.percentile(per_event, 99)),
        "chunks": chunks, "poll_size": args.poll_size, "dead_letters": dead_letters,
        "lengths": (min(len(r) for r in records), max(len(r) for r in records)),
    }


def _pace(started: float, done_events: int, rate: float) -> None:
    ahead = done_events / rate - (time.perf_counter() - started)
    if ahead > 0:
        time.sleep(ahead)


class _Progress:
    """A live status line on stderr (only on a terminal), redrawn at most 10 times a second."""

    def __init__(self, events: int, steps: int):
        self.events, self.steps = events, steps
        self._last = 0.0

    def update(self, events: int, steps: int, active: int, seconds: float) -> None:
        now = time.perf_counter()
        if now - self._last < 0.1 and events < self.events:
            return
        self._last = now
        rate = steps / seconds if seconds > 0 else 0.0
        sys.stderr.write(f"\r{PROG}: events {events:,}/{self.events:,}  steps {steps:,}/{self.steps:,}  "
                         f"active streams {active:,}  {rate:,.0f} steps/s   ")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def _summary(rep: dict, step_model, server) -> str:
    ok = "OK" if rep["parity"] <= PARITY_TOLERANCE else "FAILED"
    layers = "->".join(f"{layer['kind']}({layer.get('units', '')})" for layer in step_model.layers)
    lines = [
        f"{PROG}: {rep['streams']} concurrent streams (lengths {rep['lengths'][0]}..{rep['lengths'][1]}), "
        f"{rep['steps']:,} steps in {rep['events']:,} events ({rep['chunks']:,} chunks), {rep['polls']} polls "
        f"of <= {rep['poll_size']}, {rep['dead_letters']} dead letters",
        f"  throughput   {rep['predicted'] / rep['seconds']:,.0f} steps/s ({rep['seconds']:.2f} s in the engine, "
        f"decode, validate, step)",
        f"  latency      p50 {rep['p50'] * 1e3:.2f} ms, p99 {rep['p99'] * 1e3:.2f} ms per step "
        f"(poll arrival -> prediction ready)",
        f"  accuracy     {rep['accuracy']:.4f} per step against the task's labels",
        f"  parity       max |streamed - offline Keras| = {rep['parity']:.2e} over {rep['steps']:,} steps: "
        f"{ok} (tolerance {PARITY_TOLERANCE:g})",
        f"  model        {step_model.version}: {layers}, {step_model.state_size} state floats per stream",
    ]
    if server is not None:
        lines.append(f"  metrics      {server.url}/metrics")
    return "\n".join(lines)


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)

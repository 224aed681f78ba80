"""The peer row of bench_kafka.py: the same job as `streamer serve`, written as a Quix Streams app.

Events in (JSON, keyed by stream id, one step or a chunk of steps), the same numpy `StepModel` step per
event with the stream's state in Quix's state store (RocksDB, changelogged to Kafka), one prediction
record per event out (JSON, keyed by stream id). At-least-once, Quix's defaults otherwise. This is
benchmark-only code: it runs in its own virtualenv (`.bench-venv`, made by bench_kafka.py or
`make bench-kafka`) with quixstreams and numpy, and imports the project's `models.stepmodel` from the
checkout (numpy only). SIGTERM stops it (Quix commits and closes).

    .bench-venv/bin/python benchmarks/quix_peer.py --bootstrap HOST:PORT --model DIR --input T --output T --group G
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from quixstreams import Application  # noqa: E402

from models.stepmodel import StepModel  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--state-dir", default=None)
    args = p.parse_args()

    model = StepModel.load(args.model)
    initial = model.initial_state(1)[0]

    def step(value: dict, state) -> dict:
        feats = np.asarray(value["features"], np.float32)
        xs = feats[None] if feats.ndim == 1 else feats
        h = state.get("h")
        s = initial[None] if h is None else np.asarray(h, np.float32)[None]
        ys = []
        for x in xs:
            y, s = model.step(x[None], s)
            ys.append(y[0].tolist())
        state.set("h", s[0].tolist())  # Quix's state store serialises values as JSON
        out = {"stream_id": value["stream_id"], "step": value["step"], "model": model.version}
        if feats.ndim == 1:
            out["prediction"] = ys[0]
        else:
            out["predictions"] = ys
        if "ts" in value:
            out["ts"] = value["ts"]
        return out

    app = Application(broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
                      state_dir=args.state_dir or f"/tmp/quix-state-{args.group}", loglevel="WARNING")
    source = app.topic(args.input, value_deserializer="json", key_deserializer="str")
    sink = app.topic(args.output, value_serializer="json", key_serializer="str")
    sdf = app.dataframe(source)
    sdf = sdf.apply(step, stateful=True)
    sdf.to_topic(sink)
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

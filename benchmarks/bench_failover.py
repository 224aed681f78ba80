"""Failover: kill -9 a serving instance, restart it, and time until it serves again.

Method, per round: one `streamer serve` process with serve's defaults (session timeout 45 s, static
membership with a fixed --instance-id) owns all partitions of a fresh deployment; --streams streams have
state (10 steps each, checkpointed). The instance is killed with SIGKILL (no checkpoint, no goodbye) and
the same command is started again at once. Two figures from the restart's Popen:
- **ready**: until its /healthz answers 200 (process start, model load, topic checks, group join,
  changelog restore);
- **first prediction**: a probe event produced at the kill is answered: until its prediction is in the
  output topic (for --exactly-once: visible to a read_committed reader, i.e. committed).
With --dynamic, one more round with --dynamic-membership shows what the restart costs without static
membership (the broker keeps the dead member's partitions until its session times out).

`--kafka-client kafka-python|confluent` picks serve's client (the default kafka-python).

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python benchmarks/bench_failover.py [--rounds 5] [--exactly-once] [--dynamic]
        [--kafka-client confluent]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_engine import qa_step_model  # noqa: E402
from kafka_bench_support import Deployment, Proc, events, precompile  # noqa: E402


def _output_end(consumer, topic: str) -> int:
    from kafka.structs import TopicPartition

    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    return sum(consumer.end_offsets(tps).values())


def _serve(model_dir: Path, d: Deployment, work: Path, client: str, flags: list[str]) -> Proc:
    """`streamer serve` with its own defaults (session timeout 45 s...) on deployment `d`."""
    return Proc([sys.executable, "-m", "streamer", "serve", "--model", str(model_dir), *d.serve_args(),
                 "--metrics-port", "0", "--kafka-client", client, *flags], work)


def _round(args, model_dir: Path, work: Path, extra: list[str]) -> dict:
    from kafka import KafkaConsumer

    inputs = Deployment(args.bootstrap, args.partitions)
    d = inputs.run()
    isolation = "read_committed" if args.exactly_once else "read_uncommitted"
    reader = KafkaConsumer(bootstrap_servers=args.bootstrap, isolation_level=isolation)
    flags = [*extra, *(["--exactly-once", "--transactional-id", f"bench-{uuid.uuid4().hex[:8]}"]
                       if args.exactly_once else [])]
    first = second = None
    try:
        first = _serve(model_dir, d, work, args.kafka_client, flags)
        first.wait_ready()
        d.produce(events(args.streams, 10))
        while _output_end(reader, d.output) < args.streams * 10:
            time.sleep(0.05)
        time.sleep(6 if not args.exactly_once else 2)  # a checkpoint (5 s / 1 s)
        before = _output_end(reader, d.output)
        first.proc.kill()
        first.proc.wait()
        second = _serve(model_dir, d, work, args.kafka_client, flags)
        t0 = second.started
        probe = json.dumps({"stream_id": "s00000", "step": 10, "features": [0.1] * 5}).encode()
        d.produce([(b"s00000", probe)])
        ready = second.wait_ready(timeout_s=120) - t0
        while _output_end(reader, d.output) <= before:
            time.sleep(0.01)
        answered = time.perf_counter() - t0
        restored = sum(int(n) for n in __import__("re").findall(r"restored (\d+) streams", second.log()))
        return {"ready_s": ready, "first_prediction_s": answered, "restored": restored}
    finally:
        for s in (first, second):
            if s is not None:
                s.stop()
        reader.close()
        d.delete()
        inputs.delete()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--exactly-once", action="store_true")
    p.add_argument("--dynamic", action="store_true", help="also one round without static membership (~45 s)")
    p.add_argument("--kafka-client", choices=("kafka-python", "confluent"), default="kafka-python")
    args = p.parse_args()
    model = qa_step_model()
    precompile()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        model.save(model_dir)
        mode = "exactly-once" if args.exactly_once else "at-least-once"
        print(f"bench_failover: broker {args.bootstrap}, {args.partitions} partitions, {args.streams} streams with "
              f"state, {mode}, serve defaults (session timeout 45 s), --kafka-client {args.kafka_client}; load "
              f"average {load:.2f}", flush=True)
        static = [_round(args, model_dir, work, ["--instance-id", f"bench-{uuid.uuid4().hex[:8]}"])
                  for _ in range(args.rounds)]
        for name in ("ready_s", "first_prediction_s"):
            values = [r[name] for r in static]
            print(f"static membership, kill -9 -> restart -> {name[:-2].replace('_', ' ')}: median "
                  f"{statistics.median(values):.2f} s, min {min(values):.2f} s, max {max(values):.2f} s "
                  f"over {len(values)} rounds ({', '.join(f'{v:.2f}' for v in values)})", flush=True)
        print(f"  streams restored per restart: {static[0]['restored']}", flush=True)
        if args.dynamic:
            r = _round(args, model_dir, work, ["--dynamic-membership"])
            print(f"dynamic membership (for comparison), kill -9 -> restart -> ready: {r['ready_s']:.2f} s, first "
                  f"prediction {r['first_prediction_s']:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Serving from Kafka, end to end: one `streamer serve` process and the local broker.

Figures (each printed with how it was measured):
1. throughput, single-step events: N events (S streams x T steps, interleaved, with ts) are produced to
   the input topic first; then serve starts (fresh group) and the clock runs from its /healthz turning
   ready (group joined, changelog restored) until the output topic's end offsets show every prediction
   record. Events/s = N / that time. This includes decode, engine, encode, produce, the changelog and
   the offset commits (checkpoints every second) -- everything but the group join.
2. throughput, 32-step chunks: the same with one message per 32 steps; steps/s.
3. latency at a fixed rate: a producer process sends events at --rate/s (each carries `ts`, its creation
   time in ms) to a running serve; a consumer in this process reads the predictions as they arrive and
   records arrival time - ts. p50/p99/max over the steady part (the first 2 s dropped).
4. restore: a changelog holding --restore-streams stream states (the model's, 4 partitions) is written;
   serve starts with it; the figure is serve's own restore duration (read the changelog partitions to
   their end, decode, load) from its log, and the start -> ready wall time.
With --profile single|chunks, that case runs again with serve under cProfile, and the script prints
where serve's time went, per package.

The model is the Q&A architecture (LSTM(32) -> LSTM(8) -> Dense(2), 5 features) with random weights.
The machine has 2 cores shared by the broker, serve, this script and its producer, and other work.
kafka-python computes the CRC32C of every record batch it produces (and checks those it fetches) in
pure Python (~4 MB/s) unless the `crc32c` package is installed; the header line says which it found
(run with PYTHONPATH pointing at a `pip install --target DIR crc32c` to compare).

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python benchmarks/bench_kafka.py [--quick] [--profile]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import pstats  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.stepmodel import StepModel  # noqa: E402

from bench_engine import F, qa_step_model  # noqa: E402  (same Q&A-shaped model as the engine benchmark)
SERVE_FLAGS = ["--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000"]  # else serve's defaults


# --------------------------------------------------------------------------- Kafka helpers


class Deployment:
    def __init__(self, bootstrap: str, partitions: int):
        from kafka import KafkaAdminClient

        from streamer.kafka import topics

        tag = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.names = topics.Topics.named(f"bench-{tag}", f"bench-in-{tag}", f"bench-out-{tag}", f"bench-dlq-{tag}")
        self.group = f"bench-{tag}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            topics.ensure(admin, self.names, create=True, partitions=partitions)
        finally:
            admin.close()

    def args(self) -> list[str]:
        t = self.names
        return ["--bootstrap-servers", self.bootstrap, "--group-id", self.group, "--input-topic", t.input,
                "--output-topic", t.output, "--dlq-topic", t.dlq, "--changelog-topic", t.changelog]

    def delete(self) -> None:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        admin.delete_topics(self.names.all(), timeout_ms=30000, raise_errors=False)
        admin.close()


def produce(bootstrap: str, topic: str, messages, partitioned: bool = False) -> float:
    """Send (key, value[, partition]) messages as fast as kafka-python allows; returns seconds."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=1 << 20,
                             enable_idempotence=False, max_request_size=8 << 20)
    t0 = time.perf_counter()
    for m in messages:
        producer.send(topic, key=m[0], value=m[1], partition=m[2] if partitioned else None)
    producer.flush()
    producer.close()
    return time.perf_counter() - t0


def output_count(consumer, tps) -> int:
    return sum(consumer.end_offsets(tps).values())


class Serve:
    def __init__(self, model_dir: Path, d: Deployment, log_dir: Path, *extra: str, profile: Path | None = None):
        self.log_path = log_dir / f"serve-{uuid.uuid4().hex[:6]}.log"
        cmd = [sys.executable]
        if profile is not None:
            cmd += ["-m", "cProfile", "-o", str(profile)]
        cmd += ["-m", "streamer", "serve", "--model", str(model_dir), *d.args(), "--metrics-port", "0",
                *SERVE_FLAGS, *extra]
        self._log = open(self.log_path, "w")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = None

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout_s: float = 300) -> float:
        """perf_counter() when /healthz first answered 200."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.url is None:
                m = re.search(r"metrics on (http://[\d.]+:\d+)/metrics", self.log())
                self.url = m.group(1) if m else None
            if self.url is not None:
                try:
                    with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                        if r.status == 200:
                            return time.perf_counter()
                except OSError:
                    pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve not ready:\n{self.log()[-2000:]}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


# --------------------------------------------------------------------------- cases


def events(n_streams: int, steps: int, chunk: int = 1, seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n_streams, steps, F)).round(4)
    out = []
    now = int(time.time() * 1000)
    for t in range(0, steps, chunk):
        for s in range(n_streams):
            sid = f"s{s:05d}"
            feats = x[s, t].tolist() if chunk == 1 else x[s, t:t + chunk].tolist()
            out.append((sid.encode(), json.dumps({"stream_id": sid, "step": t, "features": feats,
                                                  "ts": now}).encode()))
    return out


def throughput(args, model_dir: Path, work: Path, chunk: int, profile: Path | None = None) -> dict:
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    n_streams, steps = args.streams, args.steps if chunk == 1 else args.chunk_steps
    msgs = events(n_streams, steps, chunk)
    d = Deployment(args.bootstrap, args.partitions)
    try:
        produce_s = produce(args.bootstrap, d.names.input, msgs)
        consumer = KafkaConsumer(bootstrap_servers=args.bootstrap)
        tps = [TopicPartition(d.names.output, p) for p in range(args.partitions)]
        serve = Serve(model_dir, d, work, profile=profile)
        try:
            ready = serve.wait_ready()
            deadline = time.monotonic() + 600
            while output_count(consumer, tps) < len(msgs):
                if time.monotonic() > deadline or serve.proc.poll() is not None:
                    raise RuntimeError(f"outputs incomplete:\n{serve.log()[-2000:]}")
                time.sleep(0.02)
            seconds = time.perf_counter() - ready
        finally:
            serve.stop()
            consumer.close()
        return {"messages": len(msgs), "steps": len(msgs) * chunk, "seconds": seconds,
                "events_per_s": len(msgs) / seconds, "steps_per_s": len(msgs) * chunk / seconds,
                "input_produce_per_s": len(msgs) / produce_s}
    finally:
        d.delete()


def _paced_producer(bootstrap: str, topic: str, n_streams: int, rate: float, seconds: float, go) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=1, enable_idempotence=False)
    rng = np.random.default_rng(1)
    go.wait()
    t0 = time.perf_counter()
    sent, step = 0, 0
    total = int(rate * seconds)
    tick = 0.005
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            s = sent % n_streams
            if s == 0 and sent:
                step += 1
            sid = f"s{s:05d}"
            value = json.dumps({"stream_id": sid, "step": step, "features": rng.normal(0, 1, F).round(4).tolist(),
                                "ts": int(time.time() * 1000)}).encode()
            producer.send(topic, key=sid.encode(), value=value)
            sent += 1
        time.sleep(tick)
    producer.flush()
    producer.close()


def latency(args, model_dir: Path, work: Path) -> dict:
    from kafka import KafkaConsumer

    d = Deployment(args.bootstrap, args.partitions)
    serve = Serve(model_dir, d, work)
    try:
        serve.wait_ready()
        from kafka.structs import TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=args.bootstrap, fetch_max_wait_ms=10)
        tps = [TopicPartition(d.names.output, p) for p in range(args.partitions)]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:
            consumer.position(tp)
        ctx = mp.get_context("spawn")
        go = ctx.Event()
        producer = ctx.Process(target=_paced_producer, args=(args.bootstrap, d.names.input, args.streams,
                                                              args.rate, args.latency_seconds, go))
        producer.start()
        go.set()
        t0 = time.time()
        expected = int(args.rate * args.latency_seconds)
        lat: list[tuple[float, float, float]] = []
        deadline = time.monotonic() + args.latency_seconds + 60
        while len(lat) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=50).values():
                now = time.time()
                for r in records:
                    ts = json.loads(r.value)["ts"]
                    # r.timestamp: when serve's producer created the prediction record (CreateTime)
                    lat.append((now - t0, now * 1000 - ts, r.timestamp - ts))
        producer.join(60)
        consumer.close()
        if os.environ.get("BENCH_METRICS"):
            with urllib.request.urlopen(serve.url + "/metrics") as m:
                text = m.read().decode()
            print("\n".join(line for line in text.splitlines()
                            if line.startswith(("streamer_kafka_checkpoint_duration_seconds_sum",
                                                "streamer_kafka_checkpoint_duration_seconds_count",
                                                "streamer_poll_duration_seconds_sum", "streamer_polls_total",
                                                "streamer_kafka_checkpoints_total",
                                                "streamer_kafka_changelog_records_total"))))
        if os.environ.get("BENCH_LATENCY_DUMP"):
            np.savetxt(os.environ["BENCH_LATENCY_DUMP"], np.array(lat), fmt="%.4f")
        steady = np.array([(ms, sent) for t, ms, sent in lat if t >= 2.0])
        total, sent = steady[:, 0], steady[:, 1]
        return {"rate": args.rate, "received": len(lat), "expected": expected,
                "p50_ms": float(np.percentile(total, 50)), "p99_ms": float(np.percentile(total, 99)),
                "max_ms": float(total.max()), "sent_p50_ms": float(np.percentile(sent, 50)),
                "sent_p99_ms": float(np.percentile(sent, 99)),
                "delivery_p50_ms": float(np.percentile(total - sent, 50)),
                "delivery_p99_ms": float(np.percentile(total - sent, 99))}
    finally:
        serve.stop()
        d.delete()


def restore(args, model: StepModel, model_dir: Path, work: Path) -> dict:
    from streamer.state import StreamRecord

    d = Deployment(args.bootstrap, 4)
    try:
        rng = np.random.default_rng(2)
        now = time.time()
        states = rng.normal(0, 0.5, (args.restore_streams, model.state_size)).astype(np.float32)
        records = ((f"r{i:06d}".encode(),
                    StreamRecord(f"r{i:06d}", states[i], 41, now, model.version, i % 4).to_bytes(), i % 4)
                   for i in range(args.restore_streams))
        write_s = produce(args.bootstrap, d.names.changelog, records, partitioned=True)
        serve = Serve(model_dir, d, work)
        try:
            ready = serve.wait_ready()
            wall = ready - serve.started
            log = serve.log()
        finally:
            serve.stop()
        found = [(int(n), float(s)) for n, s in re.findall(r"restored (\d+) streams .* in ([\d.]+)s", log)]
        streams = sum(n for n, _ in found)
        seconds = sum(s for _, s in found)
        return {"streams": streams, "restore_s": seconds, "start_to_ready_s": wall,
                "changelog_write_per_s": args.restore_streams / write_s,
                "record_bytes": len(StreamRecord("r000000", states[0], 41, now, model.version, 0).to_bytes())}
    finally:
        d.delete()


def profile_summary(path: Path, top: int = 14) -> str:
    stats = pstats.Stats(str(path))
    total = sum(v[2] for v in stats.stats.values())  # tottime
    groups: dict[str, float] = {}
    for (filename, _, _), v in stats.stats.items():
        f = filename.replace("\\", "/")
        if "site-packages/kafka/" in f:
            key = "kafka-python " + f.split("site-packages/kafka/")[1].split("/")[0].replace(".py", "")
        elif "/streamer/" in f:
            key = "streamer " + f.split("/streamer/")[1].replace(".py", "")
        elif "/models/" in f:
            key = "models (numpy step)"
        elif "json" in f:
            key = "json"
        elif f.startswith("~") or "numpy" in f:
            key = "builtins / numpy C"
        else:
            key = "other python"
        groups[key] = groups.get(key, 0.0) + v[2]
    lines = [f"  {k:<34} {s:7.2f} s  {100 * s / total:5.1f} %" for k, s in
             sorted(groups.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--steps", type=int, default=100, help="single-step case: steps per stream")
    p.add_argument("--chunk-steps", type=int, default=320, help="chunk case: steps per stream (32 per message)")
    p.add_argument("--rate", type=float, default=2000.0)
    p.add_argument("--latency-seconds", type=float, default=12.0)
    p.add_argument("--restore-streams", type=int, default=100_000)
    p.add_argument("--quick", action="store_true", help="a tenth of the work (smoke run)")
    p.add_argument("--profile", choices=("single", "chunks"),
                   help="also run that case under cProfile and summarise where serve's time went")
    p.add_argument("--only", choices=("single", "chunks", "latency", "restore"), action="append")
    p.add_argument("--serve-flag", action="append", default=[], metavar="FLAG",
                   help="extra `streamer serve` flag (repeat; e.g. --serve-flag=--linger-ms=20)")
    args = p.parse_args()
    if args.quick:
        args.steps, args.chunk_steps, args.latency_seconds, args.restore_streams = 10, 64, 5.0, 10_000
    cases = args.only or ["single", "chunks", "latency", "restore"]
    SERVE_FLAGS.extend(args.serve_flag)
    model = qa_step_model()
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        model.save(model_dir)
        from streamer.kafka.config import fast_crc32c

        crc = "crc32c C extension" if fast_crc32c() else "pure-Python CRC32C (pip install crc32c: see the report)"
        print(f"bench_kafka: broker {args.bootstrap}, {args.partitions} partitions, model {model!r}, "
              f"serve {' '.join(SERVE_FLAGS)}; kafka-python {crc}", flush=True)
        if "single" in cases:
            r = throughput(args, model_dir, work, chunk=1)
            print(f"single-step events: {r['messages']:,} events ({args.streams} streams x {args.steps}) in "
                  f"{r['seconds']:.2f} s = {r['events_per_s']:,.0f} events/s end to end (target >= 10,000); "
                  f"[input written at {r['input_produce_per_s']:,.0f} msgs/s by kafka-python]", flush=True)
        if "chunks" in cases:
            r = throughput(args, model_dir, work, chunk=32)
            print(f"32-step chunks: {r['messages']:,} messages = {r['steps']:,} steps in {r['seconds']:.2f} s = "
                  f"{r['steps_per_s']:,.0f} steps/s ({r['events_per_s']:,.0f} messages/s) (target >= 100,000 "
                  "steps/s)", flush=True)
        if "latency" in cases:
            r = latency(args, model_dir, work)
            print(f"latency at {r['rate']:,.0f} events/s ({r['received']:,}/{r['expected']:,} predictions): "
                  f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.0f} ms, event ts -> "
                  "prediction at a consumer (target p99 <= 50 ms); of which event ts -> prediction sent by serve: "
                  f"p50 {r['sent_p50_ms']:.1f} ms, p99 {r['sent_p99_ms']:.1f} ms; sent -> arrived: p50 "
                  f"{r['delivery_p50_ms']:.1f} ms, p99 {r['delivery_p99_ms']:.1f} ms", flush=True)
        if "restore" in cases:
            r = restore(args, model, model_dir, work)
            print(f"restore: {r['streams']:,} streams ({r['record_bytes']} B records) restored in "
                  f"{r['restore_s']:.2f} s; serve start -> ready {r['start_to_ready_s']:.2f} s (target <= 10 s); "
                  f"[changelog written at {r['changelog_write_per_s']:,.0f} records/s]", flush=True)
        if args.profile:
            prof = work / "serve.prof"
            r = throughput(args, model_dir, work, chunk=1 if args.profile == "single" else 32, profile=prof)
            print(f"profile ({args.profile} under cProfile: {r['messages'] / r['seconds']:,.0f} messages/s with the "
                  "profiler's overhead); serve's own time by package:", flush=True)
            print(profile_summary(prof))
            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Helpers of bench_kafka.py: topics, input data, serve/peer processes, the measurements themselves.

The harness itself produces and reads with confluent-kafka (the lighter client, so that it takes less of
the shared cores); serve runs with whichever client a figure is about.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pstats
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from bench_engine import F

REPO = Path(__file__).resolve().parents[1]
PEER_VENV = REPO / ".bench-venv"


def precompile() -> None:
    """Write the bytecode of the project's modules (`streamer`, `models`) before timing start-ups, as an
    installed package has it (pip compiles what it installs; the image's `pip install .` too). A source
    checkout run with PYTHONDONTWRITEBYTECODE=1 (this project's machines set it) never writes any, and every
    serve process would compile ~60 modules first: ~60 ms of each "process start" figure."""
    import compileall

    for package in ("streamer", "models"):
        compileall.compile_dir(str(REPO / package), quiet=1)


# --------------------------------------------------------------------------- topics and data


def _admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap})


class Deployment:
    """An input topic (role "in"), or one run's group with its output, dead-letter and changelog topics."""

    def __init__(self, bootstrap: str, partitions: int, role: str = "in", input_topic: str | None = None):
        from streamer.kafka import topics
        from streamer.kafka.client import make_clients
        from streamer.kafka.config import ClientTuning, Connection

        tag = uuid.uuid4().hex[:8]
        self.bootstrap, self.partitions = bootstrap, partitions
        self.input = input_topic or f"bench-in-{tag}"
        self.group = f"bench-{tag}"
        self.output, self.dlq = f"bench-out-{tag}", f"bench-dlq-{tag}"
        self.names = topics.Topics.named(self.group, self.input, self.output, self.dlq)
        self.changelog = self.names.changelog
        self.mine = [self.input] if role == "in" else [self.output, self.dlq, self.changelog]
        admin = make_clients("confluent", Connection(bootstrap), ClientTuning(), self.input).admin()
        if role == "in":
            from streamer.kafka.client import TopicSpec

            admin.create_topics({self.input: TopicSpec(partitions)})
        else:
            topics.ensure(admin, self.names, create=True, partitions=partitions)

    def run(self) -> "Deployment":
        """A fresh group (and output, dead-letter, changelog topics) reading this input topic."""
        return Deployment(self.bootstrap, self.partitions, "run", self.input)

    def serve_args(self) -> list[str]:
        return ["--bootstrap-servers", self.bootstrap, "--group-id", self.group, "--input-topic", self.input,
                "--output-topic", self.output, "--dlq-topic", self.dlq, "--changelog-topic", self.changelog]

    def produce(self, messages, partitioned: bool = False) -> float:
        """Send (key, value[, partition]) messages as fast as possible; returns seconds."""
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 20, "acks": 1,
                             "queue.buffering.max.messages": 2_000_000, "partitioner": "murmur2_random",
                             "batch.size": 1 << 20})
        topic = self.changelog if partitioned else self.input
        t0 = time.perf_counter()
        for m in messages:
            producer.produce(topic, m[1], m[0], m[2] if partitioned else -1)
            producer.poll(0)
        producer.flush()
        return time.perf_counter() - t0

    def delete(self) -> None:
        admin = _admin(self.bootstrap)
        names = list(self.mine)
        if self.group:  # the peer's own internal topics carry its group name
            names += [t for t in admin.list_topics(timeout=10).topics if self.group in t and t not in names]
        for future in admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 - best effort
                pass


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


class _Counter:
    """How far a run got: prediction records in the output topic (end offsets), or under exactly-once the
    input offsets the group has committed (in its transactions)."""

    def __init__(self, d: Deployment, committed: bool):
        from confluent_kafka import Consumer, TopicPartition

        self.d, self.committed = d, committed
        self.consumer = Consumer({"bootstrap.servers": d.bootstrap, "group.id": d.group if committed else "bench-x",
                                  "enable.auto.commit": False})
        topic = d.input if committed else d.output
        self.tps = [TopicPartition(topic, p) for p in range(d.partitions)]

    def count(self) -> int:
        from confluent_kafka import KafkaException

        try:
            if self.committed:
                return sum(max(0, tp.offset) for tp in self.consumer.committed(self.tps, timeout=10))
            return sum(self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self.tps)
        except KafkaException:  # e.g. a topic just created whose leaders are not known everywhere yet
            return 0

    def close(self) -> None:
        self.consumer.close()


# --------------------------------------------------------------------------- processes


class Proc:
    """A serve (or peer) process; stderr to a log file."""

    def __init__(self, cmd: list[str], log_dir: Path):
        self.log_path = log_dir / f"proc-{uuid.uuid4().hex[:6]}.log"
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


def peer_python(create: bool = False) -> str | None:
    """The peer's interpreter (.bench-venv with quixstreams and numpy); made when `create`."""
    python = PEER_VENV / "bin" / "python"
    ok = python.exists() and subprocess.run([str(python), "-c", "import quixstreams, numpy"],
                                            capture_output=True).returncode == 0
    if not ok and create:
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "quixstreams", "numpy"], check=True)
        ok = True
    if not ok:
        print(f"(no Quix Streams peer: {PEER_VENV} is missing; `make bench-kafka` or "
              "`python benchmarks/bench_kafka.py --make-peer-venv` creates it)", flush=True)
    return str(python) if ok else None


# --------------------------------------------------------------------------- figures


def throughput(args, model_dir: Path, work: Path, inputs: Deployment, n: int, chunk: int, make_cmd, extra,
               eos: bool = False) -> dict:
    d = inputs.run()
    counter = _Counter(d, committed=eos)
    try:
        proc = Proc(make_cmd(model_dir, d) + list(extra), work)
        try:
            ready = proc.wait_ready() if make_cmd.ready_url else None
            deadline = time.monotonic() + 600
            while counter.count() < n:
                if time.monotonic() > deadline or proc.proc.poll() is not None:
                    raise RuntimeError(f"outputs incomplete:\n{proc.log()[-2000:]}")
                time.sleep(0.02)
            done = time.perf_counter()
        finally:
            proc.stop()
    finally:
        counter.close()
        d.delete()
    start = done - proc.started
    from_ready = done - ready if ready is not None else start
    return {"messages": n, "seconds": start, "from_start_per_s": n / start, "from_ready_per_s": n / from_ready,
            "start_to_ready_s": (ready - proc.started) if ready is not None else float("nan")}


def _paced_producer(bootstrap: str, topic: str, n_streams: int, rate: float, seconds: float, go,
                    linger_ms: float = 1) -> None:
    """Send `rate` events/s for `seconds` (each stream's steps in order), each stamped with its send time
    (`ts`, epoch ms to the microsecond). The messages are made before the clock starts, so that the
    producer process takes little of the shared cores; `ts` is filled in as each is sent."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms, "acks": 1,
                         "partitioner": "murmur2_random"})
    total = int(rate * seconds)
    x = np.random.default_rng(1).normal(0, 1, (total, F)).round(4)
    keys = [f"s{i % n_streams:05d}".encode() for i in range(total)]
    heads = [b'{"stream_id": "%s", "step": %d, "features": %s, "ts": ' % (keys[i], i // n_streams,
                                                                          json.dumps(x[i].tolist()).encode())
             for i in range(total)]
    go.wait()
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            producer.produce(topic, heads[sent] + b"%.3f}" % (time.time() * 1000), keys[sent])
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush()


def latency(args, model_dir: Path, work: Path, make_cmd, rate: float) -> dict:
    import orjson
    from confluent_kafka import Consumer, TopicPartition

    inputs = Deployment(args.bootstrap, args.partitions, "in")
    d = inputs.run()
    proc = Proc(make_cmd(model_dir, d), work)
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": "bench-latency", "fetch.wait.max.ms": 5,
                         "enable.auto.commit": False})
    try:
        proc.wait_ready()
        consumer.assign([TopicPartition(d.output, p, -1) for p in range(args.partitions)])  # OFFSET_END
        ctx = mp.get_context("spawn")
        go = ctx.Event()
        producer = ctx.Process(target=_paced_producer, args=(args.bootstrap, inputs.input, args.streams, rate,
                                                              args.latency_seconds, go,
                                                              getattr(args, "producer_linger_ms", 1)))
        producer.start()
        time.sleep(1.0)  # the reading consumer has its partitions
        go.set()
        t0 = time.time()
        expected = int(rate * args.latency_seconds)
        lat: list[tuple[float, float, float]] = []
        deadline = time.monotonic() + args.latency_seconds + 60
        while len(lat) < expected and time.monotonic() < deadline:
            msgs = consumer.consume(1000, 0)  # (consume(n, timeout) would wait the whole timeout to fill n)
            if not msgs:
                first = consumer.poll(0.05)
                msgs = [] if first is None else [first]
            now = time.time()
            for m in msgs:
                if m.error() is None:
                    ts = orjson.loads(m.value())["ts"]
                    lat.append((now - t0, now * 1000 - ts, m.timestamp()[1] - ts))
        producer.join(60)
    finally:
        consumer.close()
        proc.stop()
        d.delete()
        inputs.delete()
    if os.environ.get("BENCH_LATENCY_DUMP"):  # (seconds since start, total ms, ts -> sent ms) per prediction
        np.savetxt(os.environ["BENCH_LATENCY_DUMP"], np.array(lat), fmt="%.4f")
    steady = np.array([(ms, sent) for t, ms, sent in lat if t >= 2.0])
    total, sent = steady[:, 0], steady[:, 1]
    return {"rate": rate, "received": len(lat), "expected": expected, "p50_ms": float(np.percentile(total, 50)),
            "p99_ms": float(np.percentile(total, 99)), "max_ms": float(total.max()),
            "sent_p50_ms": float(np.percentile(sent, 50)), "sent_p99_ms": float(np.percentile(sent, 99))}


def restore(args, model, model_dir: Path, work: Path, make_cmd) -> dict:
    from streamer.state import StreamRecord

    inputs = Deployment(args.bootstrap, 4, "in")
    d = inputs.run()
    try:
        rng = np.random.default_rng(2)
        now = time.time()
        states = rng.normal(0, 0.5, (args.restore_streams, model.state_size)).astype(np.float32)
        records = ((f"r{i:06d}".encode(),
                    StreamRecord(f"r{i:06d}", states[i], 41, now, model.version, i % 4).to_bytes(), i % 4)
                   for i in range(args.restore_streams))
        d.produce(records, partitioned=True)
        proc = Proc(make_cmd(model_dir, d), work)
        try:
            wall = proc.wait_ready() - proc.started
            log = proc.log()
        finally:
            proc.stop()
    finally:
        d.delete()
        inputs.delete()
    found = [(int(n), float(s)) for n, s in re.findall(r"restored (\d+) streams .* in ([\d.]+)s", log)]
    return {"streams": sum(n for n, _ in found), "restore_s": sum(s for _, s in found), "start_to_ready_s": wall,
            "record_bytes": len(StreamRecord("r000000", states[0], 41, now, model.version, 0).to_bytes())}


def profile_summary(path: Path, top: int = 16) -> str:
    stats = pstats.Stats(str(path))
    total = sum(v[2] for v in stats.stats.values())  # tottime
    groups: dict[str, float] = {}
    for (filename, _, name), v in stats.stats.items():
        f = filename.replace("\\", "/")
        if "site-packages/kafka/" in f:
            key = "kafka-python " + f.split("site-packages/kafka/")[1].split("/")[0].replace(".py", "")
        elif "cimpl" in name or "confluent_kafka" in f:
            key = "confluent-kafka (librdkafka calls) " + (name.split("'")[1] if "'" in name else name)
        elif "/streamer/" in f:
            key = "streamer " + f.split("/streamer/")[1].replace(".py", "")
        elif "/models/" in f:
            key = "models (numpy step)"
        elif "json" in f or "json" in name or "orjson" in name:
            key = "json"
        elif f.startswith("~") or "numpy" in f:
            key = "builtins / numpy C"
        else:
            key = "other python"
        groups[key] = groups.get(key, 0.0) + v[2]
    return "\n".join(f"  {k:<48} {s:7.2f} s  {100 * s / total:5.1f} %" for k, s in
                     sorted(groups.items(), key=lambda kv: -kv[1])[:top])

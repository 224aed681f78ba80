"""Helpers for the `streamer serve` tests: serve as a real subprocess, events in, predictions out.

Nothing here imports TensorFlow. Test models are small random-weight StepModels saved as converted
directories (so serve starts without TensorFlow).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np

from tests.kafka_support import unique_name

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5

# Quick group changes on the test broker (its minimum session timeout is 6 s).
FAST_GROUP = ["--session-timeout-ms", "6000", "--heartbeat-interval-ms", "500", "--poll-timeout-ms", "50",
              "--checkpoint-interval", "0.3", "--linger-ms", "2"]


# --------------------------------------------------------------------------- data


def saved_step_model(tmp_path_factory, name: str, feature_size: int, hidden: int, seed: int):
    """An LSTM(hidden) -> Dense(2) step model with random weights, saved as a converted directory
    (no TensorFlow): (the model, its path)."""
    from tests.streamer_helpers import lstm_step_model
    model = lstm_step_model(feature_size, (hidden,), 2, seed=seed)
    path = tmp_path_factory.mktemp(name) / "model"
    model.save(path)
    return model, path


def make_sequences(n_streams: int, length: int | tuple[int, int], feature_size: int, seed: int = 0,
                   prefix: str = "s") -> dict[str, np.ndarray]:
    """{stream_id: (T, F) float32}; `length` fixed or a (low, high) range."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n_streams):
        t = length if isinstance(length, int) else int(rng.integers(length[0], length[1] + 1))
        out[f"{prefix}{i:04d}"] = rng.normal(0, 1, (t, feature_size)).astype(np.float32)
    return out


def event_messages(seqs: dict[str, np.ndarray], start: int = 0, stop: int | None = None,
                   ts: bool = True, end: bool = False) -> list[tuple[bytes, bytes]]:
    """(key, value) messages for steps [start, stop) of every stream, interleaved step by step
    (each stream's steps in order). `end`: the last step of each stream carries end=true."""
    out = []
    longest = max(len(x) for x in seqs.values())
    stop = longest if stop is None else stop
    for step in range(start, stop):
        for sid, xs in seqs.items():
            if step < len(xs):
                obj = {"stream_id": sid, "step": step, "features": xs[step].tolist()}
                if ts:
                    obj["ts"] = int(time.time() * 1000)
                if end and step == len(xs) - 1:
                    obj["end"] = True
                out.append((sid.encode(), json.dumps(obj).encode()))
    return out


def offline(model, seqs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Full-sequence predictions per stream from a fresh state: StepModel.run."""
    return {sid: model.run(xs)[0] for sid, xs in seqs.items()}


# --------------------------------------------------------------------------- Kafka I/O


def produce(bootstrap: str, topic: str, messages, transactional: bool = False) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def read_topic(bootstrap: str, topic: str, *, isolation: str = "read_uncommitted", until=None,
               timeout_s: float = 60.0, settle_s: float = 0.0, client: dict | None = None) -> list:
    """Every record of `topic` from the beginning. With `until(records) -> bool`, keep reading (re-checking
    the end offsets) until it holds or the timeout passes; then read for `settle_s` more seconds.
    `client`: more kafka-python settings (TLS/SASL)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(**{"bootstrap_servers": bootstrap, "enable_auto_commit": False,
                                "isolation_level": isolation, "max_poll_records": 5000, **(client or {})})
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list = []
        deadline = time.monotonic() + timeout_s
        settle_until = None
        while True:
            end = consumer.end_offsets(tps)
            while any(consumer.position(tp) < end[tp] for tp in tps):
                for batch in consumer.poll(timeout_ms=200).values():
                    records.extend(batch)
                if time.monotonic() > deadline:
                    break
            done = until is None or until(records)
            if done and settle_until is None:
                settle_until = time.monotonic() + settle_s
            if done and time.monotonic() >= settle_until or time.monotonic() > deadline:
                return records
            time.sleep(0.2)
    finally:
        consumer.close()


def predictions_by_key(records) -> dict[tuple[str, int], list[np.ndarray]]:
    """{(stream_id, step): [prediction, ...]} from output records (chunks expanded), in arrival order."""
    out: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    for r in records:
        obj = json.loads(r.value)
        assert r.key == obj["stream_id"].encode(), "predictions must be keyed by stream_id"
        if "predictions" in obj:
            for i, y in enumerate(obj["predictions"]):
                out[(obj["stream_id"], obj["step"] + i)].append(np.array(y, np.float32))
        else:
            out[(obj["stream_id"], obj["step"])].append(np.array(obj["prediction"], np.float32))
    return out


def expected_keys(seqs: dict[str, np.ndarray]) -> set[tuple[str, int]]:
    return {(sid, t) for sid, xs in seqs.items() for t in range(len(xs))}


def count_steps(records) -> int:
    return sum(len(v) for v in predictions_by_key(records).values())


def assert_parity(got: dict[tuple[str, int], list[np.ndarray]], want: dict[str, np.ndarray],
                  exactly_once: bool = False) -> None:
    """Every (stream, step) present; each copy equals the offline prediction; one copy under exactly-once."""
    keys = {(sid, t) for sid, ys in want.items() for t in range(len(ys))}
    missing = keys - set(got)
    assert not missing, f"{len(missing)} (stream, step) predictions missing, e.g. {sorted(missing)[:5]}"
    extra = set(got) - keys
    assert not extra, f"unexpected predictions {sorted(extra)[:5]}"
    worst = 0.0
    for (sid, t), copies in got.items():
        for y in copies:
            worst = max(worst, float(np.abs(y - want[sid][t]).max()))
    assert worst <= TOL, f"streaming differs from offline by {worst:.3g} > {TOL}"
    if exactly_once:
        dups = {k: len(v) for k, v in got.items() if len(v) > 1}
        assert not dups, f"{len(dups)} (stream, step) predictions delivered more than once, e.g. {list(dups.items())[:5]}"


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        return {p: consumer.committed(TopicPartition(topic, p)) for p in parts}
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def changelog_table(bootstrap: str, topic: str) -> dict[str, dict]:
    """{stream_id: decoded record dict} of the changelog after folding tombstones."""
    from streamer.kafka import changelog

    records = read_topic(bootstrap, topic, isolation="read_committed")
    table = changelog.fold((r.key, r.value) for r in records)
    return {k.decode(): json.loads(v) for k, v in table.items()}


# --------------------------------------------------------------------------- serve processes


class Deployment:
    """Topic names + group for one test; serve args for them."""

    def __init__(self, prefix: str = "sv", partitions: int = 2):
        self.input = unique_name(f"{prefix}-in")
        self.output = unique_name(f"{prefix}-out")
        self.dlq = unique_name(f"{prefix}-dlq")
        self.group = unique_name(f"{prefix}-grp")
        self.changelog = f"{self.group}-{self.input}-changelog"
        self.partitions = partitions

    def topics(self) -> list[str]:
        return [self.input, self.output, self.dlq, self.changelog]

    def args(self, bootstrap: str) -> list[str]:
        return ["--bootstrap-servers", bootstrap, "--input-topic", self.input, "--output-topic", self.output,
                "--dlq-topic", self.dlq, "--group-id", self.group]

    def create(self, bootstrap: str) -> None:
        subprocess.run([sys.executable, "-m", "streamer", "topics", "create", *self.args(bootstrap),
                        "--partitions", str(self.partitions)], check=True, cwd=REPO, capture_output=True,
                       timeout=60)

    def delete(self, admin) -> None:
        admin.delete_topics(self.topics(), timeout_ms=30000, raise_errors=False)


class Serve:
    """`python -m streamer serve ...` as a subprocess (with `--kafka-client client`); stderr goes to a log file.

    Every process gets its own static-membership --instance-id (many run on one host here); pass the
    same `instance_id` to play a restart of the same instance."""

    def __init__(self, model_dir, deployment: Deployment, bootstrap: str, log_dir: Path, *extra: str,
                 name: str = "serve", env: dict | None = None, instance_id: str | None = None,
                 launcher: list[str] | None = None, client: str = "kafka-python"):
        self.log_path = Path(log_dir) / f"{name}-{unique_name('log')}.log"
        self.client = client
        self.instance_id = instance_id or unique_name("instance")
        membership = [] if "--dynamic-membership" in extra else ["--instance-id", self.instance_id]
        launcher = launcher or [sys.executable, "-m", "streamer"]  # or a script that calls streamer.cli.main
        self.args = [*launcher, "serve", "--model", str(model_dir), *deployment.args(bootstrap), "--metrics-port",
                     "0", "--kafka-client", client, *FAST_GROUP, *membership, *extra]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.port = None

    def log(self) -> str:
        return self.log_path.read_text()

    def metrics_url(self, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while self.port is None:
            m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", self.log())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start its metrics server:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return f"http://127.0.0.1:{self.port}"

    def healthz(self) -> int:
        try:
            with urllib.request.urlopen(self.metrics_url() + "/healthz", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def wait_ready(self, timeout_s: float = 60.0) -> "Serve":
        deadline = time.monotonic() + timeout_s
        while self.healthz() != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve not ready (exit {self.proc.poll()}):\n{self.log()[-3000:]}")
            time.sleep(0.2)
        return self

    def metric(self, name: str, **labels) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.metrics_url() + "/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def terminate(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self, dump: bool = True) -> None:
        """SIGKILL (with `dump`, after a SIGUSR1 thread dump into the log if it is still running)."""
        if self.proc.poll() is None:
            if dump:
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(0.3)
            self.proc.kill()
        self.proc.wait(30)
        self._log.close()

    def wait(self, timeout_s: float = 60.0) -> int:
        try:
            rc = self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._log.close()
        return rc


class Feeder:
    """Produces the events of `seqs` step by step in a background thread (`step_delay` between steps),
    like live streams; the producer rides out broker outages (it buffers and retries)."""

    def __init__(self, bootstrap: str, topic: str, seqs: dict[str, np.ndarray], step_delay: float = 0.05,
                 end: bool = False):
        import threading

        self.bootstrap, self.topic, self.seqs = bootstrap, topic, seqs
        self.step_delay, self.end = step_delay, end
        self.error: BaseException | None = None
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> "Feeder":
        self._thread.start()
        return self

    def _run(self) -> None:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2,
                                     delivery_timeout_ms=300000, max_block_ms=120000)
            longest = max(len(x) for x in self.seqs.values())
            for step in range(longest):
                for key, value in event_messages(self.seqs, step, step + 1, end=self.end):
                    producer.send(self.topic, key=key, value=value)
                    self.sent += 1
                time.sleep(self.step_delay)
            producer.flush()
            producer.close()
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def join(self, timeout_s: float = 180.0) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the feeder did not finish"
        if self.error is not None:
            raise self.error

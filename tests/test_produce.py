"""`streamer produce` and `streamer.loadgen`: file mode, pacing, and the real broker (kafka marker)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest

from streamer import schema
from streamer.cli import main
from streamer.loadgen import EventGenerator, TokenBucket, run_load
from tests import kafka_support


def produce_file(tmp_path, *flags) -> tuple[list[dict], str]:
    out = tmp_path / "events.jsonl"
    rc = main(["produce", "--output", str(out), *flags])
    assert rc == 0
    return [json.loads(line) for line in out.read_text().splitlines()], str(out)


def by_stream(events: list[dict]) -> dict[str, list[dict]]:
    streams = defaultdict(list)
    for e in events:
        streams[e["stream_id"]].append(e)
    return streams


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


# --------------------------------------------------------------------------- file mode


def test_one_pass_streams_are_complete_ordered_and_interleaved(tmp_path, capsys):
    t_before = int(time.time() * 1000)
    events, _ = produce_file(tmp_path, "--streams", "20", "--seed", "3", "--min-len", "5", "--max-len", "30",
                             "--end")
    t_after = int(time.time() * 1000)
    streams = by_stream(events)
    assert len(streams) == 20
    lengths = set()
    for sid, evs in streams.items():
        assert sid.startswith("s3-")
        steps = [e["step"] for e in evs]
        assert steps == list(range(len(evs)))  # in order within the stream, no gaps
        assert 5 <= len(evs) <= 30
        lengths.add(len(evs))
        assert [e.get("end", False) for e in evs] == [False] * (len(evs) - 1) + [True]
        for e in evs:
            assert len(e["features"]) == 5 and all(0.0 <= v < 1.0 for v in e["features"])
            assert t_before <= e["ts"] <= t_after
    assert len(lengths) > 3  # lengths vary per stream
    # interleaved: the stream changes far more often than once per stream
    switches = sum(a["stream_id"] != b["stream_id"] for a, b in zip(events, events[1:]))
    assert switches > len(events) / 2
    err = capsys.readouterr().err
    assert f"{len(events)} events" in err and "20 streams (20 ended)" in err and "stopped: done" in err


def test_events_pass_the_server_schema(tmp_path):
    events, path = produce_file(tmp_path, "--streams", "7", "--seed", "1", "--chunk", "4", "--end")
    raw = open(path, "rb").read().splitlines()
    decoded, rejected = schema.decode(raw, feature_size=5)
    assert rejected == [] and len(decoded) == len(events)
    assert decoded.chunk.all() and decoded.end.sum() == 7


def test_chunks_cover_each_stream_once(tmp_path):
    events, _ = produce_file(tmp_path, "--streams", "10", "--seed", "5", "--chunk", "4", "--max-len", "21")
    for evs in by_stream(events).values():
        step = 0
        for i, e in enumerate(evs):
            assert e["step"] == step
            k = len(e["features"])
            assert all(len(row) == 5 for row in e["features"])
            assert k == 4 or (i == len(evs) - 1 and 1 <= k <= 4)
            step += k
        assert 10 <= step <= 21
        assert all("end" not in e for e in evs)  # only with --end


def test_same_seed_same_events_and_matches_qa_generator(tmp_path):
    a, _ = produce_file(tmp_path, "--streams", "4", "--seed", "9")
    b, _ = produce_file(tmp_path, "--streams", "4", "--seed", "9")
    strip = lambda evs: [{k: v for k, v in e.items() if k != "ts"} for e in evs]  # noqa: E731
    assert strip(a) == strip(b)
    c, _ = produce_file(tmp_path, "--streams", "4", "--seed", "10")
    assert strip(c) != strip(a)
    # features are float32 values written exactly
    x = np.asarray([e["features"] for e in a], dtype=np.float64)
    assert np.array_equal(x, x.astype(np.float32).astype(np.float64))


def test_continuous_replaces_finished_streams_and_stops_at_events(tmp_path, capsys):
    events, _ = produce_file(tmp_path, "--streams", "5", "--seed", "2", "--max-len", "10", "--continuous",
                             "--events", "500", "--end")
    assert len(events) == 500
    streams = by_stream(events)
    assert len(streams) > 40  # ~500 / 10 average length, far more than the 5 open at once
    ended = sum(evs[-1].get("end", False) for evs in streams.values())
    assert ended >= len(streams) - 5
    assert "stopped: events" in capsys.readouterr().err


def test_random_prefix_differs_between_runs_without_seed(tmp_path):
    a, _ = produce_file(tmp_path, "--streams", "1", "--max-len", "10")
    b, _ = produce_file(tmp_path, "--streams", "1", "--max-len", "10")
    assert a[0]["stream_id"] != b[0]["stream_id"]


def test_produced_file_replays_without_dead_letters(tmp_path):
    from tests.streamer_helpers import qa_step_model

    model_dir = tmp_path / "model"
    qa_step_model().save(model_dir)
    _, path = produce_file(tmp_path, "--streams", "30", "--seed", "4", "--chunk", "3", "--end")
    out = tmp_path / "pred.jsonl"
    assert main(["replay", "--model", str(model_dir), "--input", path, "--output", str(out), "--quiet"]) == 0
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(preds) == len(open(path).read().splitlines())
    assert all("predictions" in p for p in preds)


def test_stdout_output_and_environment_defaults(tmp_path):
    env = {"STREAMER_STREAMS": "3", "STREAMER_SEED": "7", "STREAMER_MAX_LEN": "10", "STREAMER_END": "1",
           "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "streamer", "produce", "--output", "-"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    streams = by_stream(events)
    assert len(streams) == 3 and all(evs[-1]["end"] for evs in streams.values())
    assert "3 streams (3 ended)" in r.stderr


def test_sigterm_stops_a_continuous_run_with_a_summary(tmp_path):
    """`docker stop` sends SIGTERM: the generator stops between events, flushes and exits 0."""
    import signal

    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "produce", "--output", str(out), "--continuous",
                             "--streams", "5", "--rate", "200"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while (not out.exists() or out.stat().st_size == 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped: interrupted" in err
    lines = out.read_text().splitlines()
    assert lines and all(json.loads(line)["stream_id"] for line in lines)  # whole lines only


@pytest.mark.parametrize("flags, words", [
    ([], "either --bootstrap-servers"),
    (["--output", "x.jsonl", "--bootstrap-servers", "127.0.0.1:1"], "not both"),
    (["--output", "x.jsonl", "--min-len", "20", "--max-len", "10"], "--min-len (20) is above --max-len (10)"),
    (["--output", "/nonexistent-dir/x.jsonl"], "cannot write /nonexistent-dir/x.jsonl"),
])
def test_user_errors_are_one_line(flags, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["produce", *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_flag_values_exit_2(capsys):
    for flags in (["--streams", "0"], ["--rate", "-1"], ["--chunk", "x"], ["--duration", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(["produce", "--output", "-", *flags])
        assert exc.value.code == 2
    assert "expected" in capsys.readouterr().err


# --------------------------------------------------------------------------- pacing (fake clock)


def test_token_bucket_paces_to_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=10, clock=clock, sleep=clock.sleep)
    for _ in range(5010):
        bucket.wait(1)
    # the first 10 are the burst; the other 5000 take 5 s at 1000/s
    assert clock.slept == pytest.approx(5.0, rel=1e-6)
    assert TokenBucket(0, clock=clock, sleep=clock.sleep).wait(1e9) == 0.0  # 0: unlimited


def test_run_load_stops_at_duration_and_paces():
    clock = FakeClock()
    gen = EventGenerator(10, total_streams=None, seed=0)
    sent = []
    summary = run_load(gen, lambda k, v: sent.append((k, v)), rate=200, duration=2.0, clock=clock,
                       sleep=clock.sleep)
    assert summary.stopped_by == "duration"
    assert 400 <= summary.events <= 411  # 2 s at 200/s plus a 50 ms burst
    assert len(sent) == summary.events
    assert summary.elapsed == pytest.approx(2.0, abs=0.01)
    k, v = sent[0]
    assert json.loads(v)["stream_id"] == k.decode()


def test_generator_validates_its_arguments():
    for kwargs in ({"streams": 0}, {"streams": 1, "min_len": 5, "max_len": 4}, {"streams": 1, "chunk": -1},
                   {"streams": 3, "total_streams": 2}):
        with pytest.raises(ValueError):
            EventGenerator(**kwargs)


# --------------------------------------------------------------------------- the real broker


@pytest.mark.kafka
def test_produce_to_kafka_keys_partitions_and_order(kafka_bootstrap, unique_topic, capsys):
    from kafka import KafkaConsumer, TopicPartition

    topic = unique_topic("produce", partitions=3)
    rc = main(["produce", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--streams", "12",
               "--seed", "11", "--max-len", "20", "--chunk", "2", "--end", "--rate", "5000"])
    assert rc == 0
    err = capsys.readouterr().err
    assert f"kafka topic {topic} (3 partitions)" in err
    n = int(err.split(f"{'streamer produce'}: ")[1].split(" events")[0])
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        parts = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records = kafka_support.read_to_end(consumer, parts)
    finally:
        consumer.close()
    assert len(records) == n
    partition_of: dict[str, int] = {}
    streams = defaultdict(list)
    for r in records:
        e = json.loads(r.value)
        assert r.key.decode() == e["stream_id"]
        assert partition_of.setdefault(e["stream_id"], r.partition) == r.partition  # keyed: one partition
        streams[e["stream_id"]].append(e)
    assert len(streams) == 12 and len(set(partition_of.values())) > 1
    for evs in streams.values():  # per-partition order keeps each stream in order
        assert [e["step"] for e in evs] == list(range(0, 2 * len(evs), 2))[: len(evs)]
        assert evs[-1]["end"] is True


@pytest.mark.kafka
def test_missing_topic_is_a_user_error(kafka_bootstrap, capsys):
    topic = kafka_support.unique_name("absent")
    t0 = time.monotonic()
    assert main(["produce", "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--streams", "1",
                 "--connect-timeout", "3"]) == 2
    err = capsys.readouterr().err
    assert f"topic {topic!r} does not exist" in err and "streamer topics create" in err
    assert time.monotonic() - t0 < 30


def test_unreachable_broker_is_a_user_error(capsys):
    assert main(["produce", "--bootstrap-servers", "127.0.0.1:1", "--streams", "1", "--connect-timeout", "1"]) == 2
    assert "no Kafka broker answers at 127.0.0.1:1 within 1 s" in capsys.readouterr().err

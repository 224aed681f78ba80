"""Metrics: values read over real HTTP from /metrics after a replay; /healthz; naming rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from streamer.engine import Engine, run
from streamer.http import MetricsServer
from streamer.metrics import LATENCY_BUCKETS, BulkHistogram, Metrics
from streamer.transports.testing import TestingSink, TestingSource
from tests.streamer_helpers import event, lstm_step_model

ROOT = Path(__file__).resolve().parents[1]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def sample(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_metrics_from_the_endpoint_after_a_cli_replay(tmp_path):
    model = lstm_step_model(3, (4,), 2, seed=1)
    model.save(tmp_path / "model")
    lines = []
    for t in range(5):
        for s in ("a", "b", "c", "d"):
            lines.append(json.dumps({"stream_id": s, "step": t, "features": [t, 1, 2], "ts": 1_000 + t}))
    lines.append(json.dumps({"stream_id": "a", "step": 2, "features": [0, 0, 0]}))  # duplicate
    lines.append("garbage")
    lines.append(json.dumps({"stream_id": "b", "features": [1, 2]}))
    lines.append(json.dumps({"stream_id": "d", "step": 5, "features": [1, 2, 3], "end": True}))
    assert len(lines) == 24
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "replay", "--model", str(tmp_path / "model"),
         "--output", str(tmp_path / "out.jsonl"), "--batch-lines", "6", "--metrics-port", "0"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first = proc.stderr.readline().decode()
        assert "metrics on http://127.0.0.1:" in first, first
        url = first.split("metrics on ", 1)[1].strip().removesuffix("/metrics")
        proc.stdin.write(("\n".join(lines) + "\n").encode())
        proc.stdin.flush()  # four full polls of 6 lines: processed while stdin stays open
        deadline = time.monotonic() + 30
        while True:
            samples = scrape(url)
            if sample(samples, "streamer_polls_total") == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert get_status(url + "/healthz") == 200
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == 0
    assert sample(samples, "streamer_polls_total") == 4
    assert sample(samples, "streamer_events_total", outcome="applied") == 21
    assert sample(samples, "streamer_events_total", outcome="duplicate") == 1
    assert sample(samples, "streamer_events_total", outcome="invalid") == 2
    assert sample(samples, "streamer_steps_total", outcome="applied") == 21
    assert sample(samples, "streamer_predictions_total") == 21
    assert sample(samples, "streamer_dead_letters_total", reason="invalid_json") == 1
    assert sample(samples, "streamer_dead_letters_total", reason="wrong_feature_count") == 1
    assert sample(samples, "streamer_dead_letters_total", reason="step_gap") == 0
    assert sample(samples, "streamer_streams_started_total") == 4
    assert sample(samples, "streamer_streams_freed_total", reason="end") == 1
    assert sample(samples, "streamer_active_streams") == 3
    assert sample(samples, "streamer_event_lag_seconds_count") == 20
    assert sample(samples, "streamer_event_latency_seconds_count") == 24
    assert sample(samples, "streamer_poll_duration_seconds_count") == 4
    assert sample(samples, "streamer_wave_size_streams_sum") == 21
    info = [k for k in samples if k[0] == "streamer_model_info"]
    assert info and ("version", model.version) in info[0][1]


def test_metrics_endpoint_after_an_in_process_replay():
    model = lstm_step_model(3, (4,), 2)
    metrics = Metrics(CollectorRegistry())
    engine = Engine(model, metrics=metrics)
    with MetricsServer(metrics.registry, port=0) as server:
        assert get_status(server.url + "/healthz") == 503
        server.ready.set()
        msgs = [event(s, [1, 2, 3], step=t) for t in range(3) for s in ("x", "y")] + [b"{}"]
        run(engine, TestingSource(msgs, batch_size=4).polls(), TestingSink())
        samples = scrape(server.url)
        assert get_status(server.url + "/healthz") == 200
        assert get_status(server.url + "/nope") == 404
    assert sample(samples, "streamer_predictions_total") == 6
    assert sample(samples, "streamer_dead_letters_total", reason="missing_stream_id") == 1
    assert sample(samples, "streamer_wave_size_streams_count") == 3  # polls [x0 y0 x1 y1] [x2 y2 {}]: 2+1 waves
    assert sample(samples, "streamer_active_streams") == 2


def test_server_binds_loopback_by_default_and_port_0_is_ephemeral():
    with MetricsServer(CollectorRegistry()) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.port > 0


def test_bulk_histogram_matches_prometheus_histogram():
    reg = CollectorRegistry()
    bulk = BulkHistogram("t_bulk_seconds", "x", LATENCY_BUCKETS, reg)
    ref = Histogram("t_ref_seconds", "x", buckets=LATENCY_BUCKETS, registry=reg)
    values = np.concatenate([np.random.default_rng(0).exponential(0.01, 500), LATENCY_BUCKETS, [0.0, 99.0]])
    bulk.observe_many(values[:300])
    for v in values[300:]:
        bulk.observe(float(v))
    for v in values:
        ref.observe(float(v))
    for b in list(map(str, LATENCY_BUCKETS)) + ["+Inf"]:
        le = b if b == "+Inf" else repr(float(b))
        assert reg.get_sample_value("t_bulk_seconds_bucket", {"le": le}) == \
            reg.get_sample_value("t_ref_seconds_bucket", {"le": le}), b
    assert reg.get_sample_value("t_bulk_seconds_count") == len(values)
    assert reg.get_sample_value("t_bulk_seconds_sum") == pytest.approx(reg.get_sample_value("t_ref_seconds_sum"))
    bulk.observe(0.5, count=7)
    assert reg.get_sample_value("t_bulk_seconds_count") == len(values) + 7


def test_metric_names_units_and_labels_follow_the_conventions():
    metrics = Metrics(CollectorRegistry())
    metrics.set_model(lstm_step_model(3, (4,), 2))
    for family in metrics.registry.collect():
        assert family.name.startswith("streamer_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_streams")), family.name
        for s in family.samples:
            assert "stream_id" not in s.labels and "stream" not in s.labels


def test_two_metrics_objects_do_not_share_state():
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.predictions.inc(3)
    assert b.registry.get_sample_value("streamer_predictions_total") == 0

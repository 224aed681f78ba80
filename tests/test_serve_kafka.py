"""`streamer serve` against the real broker: parity with offline predictions (StepModel.run and the
Keras model itself), dead letters with their source partition/offset, SIGTERM shutdown (offsets
committed, state in the changelog), a model version change at start-up, and the topic checks.
Each test runs serve as a real subprocess on its own topics and group."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from streamer.kafka import topics as topic_admin
from streamer.kafka.topics import Topics
from tests.serve_support import (REPO, Deployment, Serve, assert_parity, changelog_table, committed_offsets,
                                 count_steps, end_offsets, event_messages, offline, predictions_by_key, produce,
                                 read_topic)
from tests.serve_support import saved_step_model
from tests.streamer_helpers import lstm_step_model

pytestmark = pytest.mark.kafka

F = 3


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    return saved_step_model(tmp_path_factory, "serve-model", F, 8, seed=3)


@pytest.fixture
def deployment(kafka_bootstrap, kafka_admin):
    """Factory: deployment(partitions) -> Deployment with its four topics created; deleted afterwards."""
    made = []

    def make(partitions: int = 2, prefix: str = "sv") -> Deployment:
        d = Deployment(prefix, partitions)
        topic_admin.ensure(kafka_admin, Topics(d.input, d.output, d.dlq, d.changelog), create=True,
                           partitions=partitions)
        made.append(d)
        return d

    yield make
    for d in made:
        d.delete(kafka_admin)


def _wait_for_steps(bootstrap, topic, n, timeout_s=60, isolation="read_uncommitted"):
    records = read_topic(bootstrap, topic, isolation=isolation, until=lambda rs: count_steps(rs) >= n,
                         timeout_s=timeout_s)
    assert count_steps(records) >= n, f"only {count_steps(records)} of {n} step predictions arrived"
    return records


def test_parity_with_offline_predictions_and_the_keras_model(kafka_client, kafka_bootstrap, deployment, tmp_path):
    """Every (stream, step) prediction served through Kafka equals the offline full-sequence prediction:
    StepModel.run per stream, and the Keras model's own output (eager call) for the model it came from.
    Includes 32-step chunks (one record with "predictions")."""
    keras = pytest.importorskip("keras")
    from models.convert import convert_model

    inputs = keras.Input((None, F))
    x = keras.layers.LSTM(8, return_sequences=True)(inputs)
    kmodel = keras.Model(inputs, keras.layers.Dense(2, activation="sigmoid")(x))
    step_model = convert_model(kmodel)
    model_dir = tmp_path / "model"
    step_model.save(model_dir)

    d = deployment(partitions=2)
    rng = np.random.default_rng(0)
    seqs = {f"s{i:03d}": rng.normal(0, 1, (int(rng.integers(3, 25)), F)).astype(np.float32) for i in range(30)}
    chunked = {f"c{i}": rng.normal(0, 1, (64, F)).astype(np.float32) for i in range(3)}
    messages = event_messages(seqs)
    for sid, xs in chunked.items():  # two chunks of 32 steps each
        for start in (0, 32):
            messages.append((sid.encode(), json.dumps({"stream_id": sid, "step": start,
                                                       "features": xs[start:start + 32].tolist()}).encode()))
    produce(kafka_bootstrap, d.input, messages)
    serve = Serve(model_dir, d, kafka_bootstrap, tmp_path, client=kafka_client)
    try:
        want = offline(step_model, {**seqs, **chunked})
        total = sum(len(y) for y in want.values())
        records = _wait_for_steps(kafka_bootstrap, d.output, total)
        got = predictions_by_key(records)
        assert_parity(got, want)
        assert {json.loads(r.value)["model"] for r in records} == {step_model.version}
        # the Keras model itself, on a few streams (eager call: right for any length)
        for sid in ["s000", "s001", "c0"]:
            xs = {**seqs, **chunked}[sid]
            ys = np.asarray(kmodel(xs[None], training=False))[0]
            served = np.array([got[(sid, t)][0] for t in range(len(xs))])
            assert np.abs(served - ys).max() <= 1e-5
        assert serve.metric("streamer_kafka_produced_records_total", kind="prediction") == len(records)
    finally:
        assert serve.terminate() == 0, serve.log()[-3000:]


def test_bad_events_go_to_the_dlq_with_their_source_and_the_good_ones_are_unharmed(
        kafka_client, kafka_bootstrap, deployment, small_model, tmp_path):
    model, model_dir = small_model
    d = deployment(partitions=2)
    rng = np.random.default_rng(1)
    seqs = {f"d{i}": rng.normal(0, 1, (8, F)).astype(np.float32) for i in range(4)}
    good = event_messages(seqs)
    bad = [(b"d0", b"{not json"),
           (b"d1", json.dumps({"stream_id": "d1", "step": 3, "features": [1.0, 2.0]}).encode()),  # 2 of 3
           (b"d2", json.dumps({"step": 1, "features": [1.0, 2.0, 3.0]}).encode()),  # no stream id
           (b"d3", b'{"stream_id": "d3", "step": 2, "features": [1.0, NaN, 3.0]}'),
           (b"d0", b"\xff\xfe not utf-8"),
           (None, b"[1, 2, 3]")]
    messages = list(good)
    for i, m in enumerate(bad):  # spread between the good ones
        messages.insert(3 + 5 * i, m)
    produce(kafka_bootstrap, d.input, messages)
    serve = Serve(model_dir, d, kafka_bootstrap, tmp_path, client=kafka_client)
    try:
        records = _wait_for_steps(kafka_bootstrap, d.output, sum(len(x) for x in seqs.values()))
        assert_parity(predictions_by_key(records), offline(model, seqs))
        dead = read_topic(kafka_bootstrap, d.dlq, until=lambda rs: len(rs) >= len(bad), timeout_s=30)
        assert len(dead) == len(bad)
        inputs = {(r.partition, r.offset): r for r in read_topic(kafka_bootstrap, d.input)}
        codes = []
        for r in dead:
            dl = json.loads(r.value)
            src = dl["source"]
            assert src["topic"] == d.input
            original = inputs[(src["partition"], src["offset"])]  # the exact message it came from
            assert r.key == original.key
            from streamer.schema import payload_bytes
            assert payload_bytes(dl) == original.value
            codes.append(dl["error"])
        assert sorted(codes) == sorted(["invalid_json", "wrong_feature_count", "missing_stream_id",
                                        "non_finite_features", "invalid_utf8", "not_an_object"])
        assert serve.metric("streamer_dead_letters_total") == len(bad)
        # the client's view of the group: connected, both partitions owned, nothing left to read
        deadline = time.monotonic() + 15
        while not (serve.metric("streamer_kafka_connections") > 0 and
                   _lag_series(serve) == {"0": 0.0, "1": 0.0}):
            assert time.monotonic() < deadline, f"connections/lag not reported: {_lag_series(serve)}"
            time.sleep(0.3)
    finally:
        assert serve.terminate() == 0


def _lag_series(serve) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(serve.metrics_url() + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {s.labels["partition"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "streamer_kafka_consumer_lag_records"}


def test_sigterm_checkpoints_commits_and_leaves_the_group(kafka_client, kafka_bootstrap, deployment, small_model,
                                                          tmp_path):
    model, model_dir = small_model
    d = deployment(partitions=2)
    rng = np.random.default_rng(2)
    seqs = {f"t{i}": rng.normal(0, 1, (12, F)).astype(np.float32) for i in range(10)}
    seqs["ends"] = rng.normal(0, 1, (4, F)).astype(np.float32)
    messages = event_messages({k: v for k, v in seqs.items() if k != "ends"}) + event_messages(
        {"ends": seqs["ends"]}, end=True)
    produce(kafka_bootstrap, d.input, messages)
    # checkpoints only at shutdown
    serve = Serve(model_dir, d, kafka_bootstrap, tmp_path, "--checkpoint-interval", "60", client=kafka_client)
    try:
        serve.wait_ready()
        _wait_for_steps(kafka_bootstrap, d.output, sum(len(x) for x in seqs.values()))
    finally:
        t0 = time.monotonic()
        rc = serve.terminate()
    assert rc == 0, serve.log()[-3000:]
    assert time.monotonic() - t0 < 15
    log = serve.log()
    assert "SIGTERM" in log and "stopped:" in log
    assert committed_offsets(kafka_bootstrap, d.group, d.input) == end_offsets(kafka_bootstrap, d.input)
    table = changelog_table(kafka_bootstrap, d.changelog)
    assert set(table) == {f"t{i}" for i in range(10)}  # "ends" ended: tombstoned
    assert {r["last_step"] for r in table.values()} == {11}
    assert {r["model"] for r in table.values()} == {model.version}
    for sid, rec in table.items():  # the checkpointed state is the state after the last step
        import base64
        state = np.frombuffer(base64.b64decode(rec["state"]), "<f4")
        assert np.allclose(state, model.run(seqs[sid])[1], atol=1e-6)
    # the group is empty again: a new member gets every partition straight away
    again = Serve(model_dir, d, kafka_bootstrap, tmp_path, name="again", client=kafka_client)
    try:
        again.wait_ready(timeout_s=20)
        assert again.metric("streamer_kafka_assigned_partitions") == 2
        assert again.metric("streamer_kafka_restored_streams_total") == 10
    finally:
        assert again.terminate() == 0


def test_a_new_model_version_resets_old_state_keeps_steps_or_refuses(kafka_client, kafka_bootstrap, deployment,
                                                                   small_model, tmp_path):
    """Model A serves steps 0-9; model B (another state size) starts: by default each stream's state is
    reset to B's initial state with its step counter kept (duplicates still skipped, new steps go on);
    with --on-model-change refuse serve exits 2 without touching the changelog."""
    model_a, dir_a = small_model
    model_b = lstm_step_model(F, (5,), 2, seed=9)
    dir_b = tmp_path / "model-b"
    model_b.save(dir_b)
    assert model_b.state_size != model_a.state_size
    d = deployment(partitions=2)
    rng = np.random.default_rng(4)
    seqs = {f"m{i}": rng.normal(0, 1, (15, F)).astype(np.float32) for i in range(6)}
    produce(kafka_bootstrap, d.input, event_messages(seqs, 0, 10))
    a = Serve(dir_a, d, kafka_bootstrap, tmp_path, name="a", client=kafka_client)
    _wait_for_steps(kafka_bootstrap, d.output, 60)
    assert a.terminate() == 0

    refused = subprocess.run([sys.executable, "-m", "streamer", "serve", "--model", str(dir_b),
                              *d.args(kafka_bootstrap), "--on-model-change", "refuse", "--metrics-port", "0",
                              "--kafka-client", kafka_client,
                              "--session-timeout-ms", "6000"], cwd=REPO, capture_output=True, text=True,
                             timeout=90)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"made by model {model_a.version}" in refused.stderr and "--on-model-change reset" in refused.stderr

    b = Serve(dir_b, d, kafka_bootstrap, tmp_path, name="b", client=kafka_client)
    try:
        b.wait_ready()
        assert b.metric("streamer_kafka_state_model_changes_total", action="reset") == 6
        assert "made by another model version" in b.log()
        replay = event_messages(seqs, 8, 10)  # duplicates: must give no prediction
        produce(kafka_bootstrap, d.input, replay + event_messages(seqs, 10, 15))
        records = _wait_for_steps(kafka_bootstrap, d.output, 90)
        time.sleep(1)
        got = predictions_by_key(read_topic(kafka_bootstrap, d.output))
        assert sum(len(v) for v in got.values()) == 90  # no prediction for the replayed steps 8, 9
        for sid, xs in seqs.items():
            fresh = model_b.run(xs[10:])[0]  # B from its initial state, from step 10 on
            for t in range(10, 15):
                assert np.abs(got[(sid, t)][0] - fresh[t - 10]).max() <= 1e-5
        versions = {json.loads(r.value)["model"] for r in records if json.loads(r.value)["step"] >= 10}
        assert versions == {model_b.version}
    finally:
        assert b.terminate() == 0
    assert {r["model"] for r in changelog_table(kafka_bootstrap, d.changelog).values()} == {model_b.version}


def test_topics_create_and_a_changelog_with_other_partitions_is_refused(kafka_client, kafka_bootstrap, kafka_admin,
                                                                       small_model, tmp_path):
    _, model_dir = small_model
    d = Deployment("tc", partitions=3)
    try:
        out = subprocess.run([sys.executable, "-m", "streamer", "topics", "create", *d.args(kafka_bootstrap),
                              "--partitions", "3", "--kafka-client", kafka_client], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        counts = topic_admin.describe(kafka_admin, d.topics())
        assert counts == {t: 3 for t in d.topics()}
        assert "compact" in topic_admin.cleanup_policy(kafka_admin, d.changelog)
        # another changelog with 2 partitions: serve must refuse to start
        other = d.group + "-other-changelog"
        kafka_admin.create_topics({other: {"num_partitions": 2, "configs": {"cleanup.policy": "compact"}}},
                                  wait_for_metadata=True)
        bad = subprocess.run([sys.executable, "-m", "streamer", "serve", "--model", str(model_dir),
                              *d.args(kafka_bootstrap), "--changelog-topic", other, "--metrics-port", "0",
                              "--kafka-client", kafka_client],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2
        assert "has 2 partitions but input topic" in bad.stderr and bad.stderr.count("\n") <= 3
    finally:
        d.delete(kafka_admin)
        kafka_admin.delete_topics([d.group + "-other-changelog"], timeout_ms=30000, raise_errors=False)

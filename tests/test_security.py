"""The CLI against a real secured broker: `KAFKA_SECURITY=sasl_ssl deploy/kafka-local/kafka.sh up` (TLS with a CA
made at start-up, SCRAM-SHA-512 users, ACLs enforced), started once for this module on free ports and stopped
at its end.

- the broker's secrets and ACLs are what kafka.sh promises (modes, users, ACLs = streamer.kafka.acls);
- `serve` as the least-privilege user (at-least-once on the ACLs kafka.sh made, --exactly-once on ACLs granted
  from streamer.kafka.acls) serves what offline prediction gives; `produce` as the producer user; `topics
  create` as the admin;
- a wrong password, a topic or group without ACL, PLAINTEXT against the TLS port and an unknown CA: one line,
  exit 2, within 30 s; a broker that is down is still retried;
- the password is in no log (DEBUG everywhere, librdkafka's debug contexts too), no scrape, no error line and
  no command line;
- confluent-kafka (librdkafka) errors from the same broker are classified by streamer.kafka.failures too.

Every serve and topics check runs with both clients (`kafka_client`: --kafka-client kafka-python|confluent)
against the one broker of the module; `produce` has only kafka-python.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from streamer.kafka import acls
from streamer.kafka.failures import explain
from streamer.kafka.topics import Topics
from tests.secure_support import can_run_kafka_sh, start_secure_broker
from tests.serve_support import Deployment, Serve, assert_parity, count_steps, offline, predictions_by_key, read_topic
from tests.streamer_helpers import lstm_step_model

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DEFAULT = Topics.named("streamer")  # the topics and group kafka.sh's ACLs are for


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    why = can_run_kafka_sh()
    if why:
        pytest.skip(why)
    b = start_secure_broker(tmp_path_factory.mktemp("secure-kafka"))
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    m = lstm_step_model(5, (8,), 2, seed=11)  # `streamer produce` sends 5 features
    path = tmp_path_factory.mktemp("secure-model") / "model"
    m.save(path)
    return m, path


def _one_line_error(result, elapsed: float) -> str:
    """The failure contract: exit 2, a last line `streamer: error: ...`, no traceback, within 30 s."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert elapsed < 30, f"took {elapsed:.1f}s"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("streamer: error: "), result.stderr[-3000:]
    return last


def _sequences(records) -> dict[str, np.ndarray]:
    """The streams of input events (one step each), as sent: {stream_id: (T, F)}."""
    steps = defaultdict(dict)
    for r in records:
        obj = json.loads(r.value)
        steps[obj["stream_id"]][obj["step"]] = obj["features"]
    return {sid: np.array([s[t] for t in range(len(s))], np.float32) for sid, s in steps.items()}


def _assert_secret_free(text: str, broker, where: str) -> None:
    for user, password in broker.users.items():
        assert password not in text, f"the password of {user} is in {where}"


# --------------------------------------------------------------------------- the broker kafka.sh made


def test_the_secured_broker_keeps_its_secrets_and_grants_serve_exactly_its_acls(broker):
    secure = broker.secure_dir
    assert oct(secure.stat().st_mode & 0o777) == "0o700"
    for name in ("users.env", "admin.properties", "broker.p12", "broker.p12.pass"):
        assert oct((secure / name).stat().st_mode & 0o777) == "0o600", name
    assert oct((broker.state / "server.properties").stat().st_mode & 0o777) == "0o600"
    assert not list(secure.glob("*.key")), "private keys outside the key store"
    assert set(broker.users) == {"admin", "streamer", "producer"}
    assert len(set(broker.users.values())) == 3 and all(len(p) >= 32 for p in broker.users.values())
    for log in ("kafka.log", "format.log", "acls.log"):
        _assert_secret_free((broker.state / log).read_text(), broker, log)
    conf = (broker.state / "server.properties").read_text()
    assert "allow.everyone.if.no.acl.found=false" in conf and "StandardAuthorizer" in conf
    assert f"listeners=SASL_SSL://127.0.0.1:{broker.port},CONTROLLER://127.0.0.1:" in conf
    assert "0.0.0.0" not in conf and "PLAINTEXT://" not in conf

    # The broker's ACLs are the documented ones (streamer.kafka.acls) for serve's default names.
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ResourcePatternFilter, ResourceType
    from kafka.admin import ACLResourcePatternType

    admin = broker.admin()
    try:
        found, error = admin.describe_acls(ACLFilter(None, "*", ACLOperation.ANY, ACLPermissionType.ANY,
                                                     ResourcePatternFilter(ResourceType.ANY, None,
                                                                           ACLResourcePatternType.ANY)))
    finally:
        admin.close()

    def key(acl):
        return (acl.principal, acl.resource_pattern.resource_type, acl.resource_pattern.resource_name,
                acl.resource_pattern.pattern_type, acl.operation)

    want = acls.kafka_python_acls("User:streamer", acls.serve_needs(DEFAULT, "streamer")) \
        + acls.kafka_python_acls("User:producer", acls.producer_needs(DEFAULT.input))
    assert {key(a) for a in found} == {key(a) for a in want}


# --------------------------------------------------------------------------- serving as the least-privilege user


def _produce(broker, topic: str, seed: int) -> None:
    out = broker.streamer("produce", "--topic", topic, "--streams", "12", "--min-len", "3", "--max-len", "10",
                          "--seed", str(seed), user="producer")
    assert out.returncode == 0, out.stderr[-2000:]


def _serve_and_check(broker, model, deployment, tmp_path, *extra, env=None, exactly_once=False, client="kafka-python"):
    step_model, model_dir = model
    admin_client = broker.kafka_python("admin")
    seqs = _sequences(read_topic(broker.bootstrap, deployment.input, client=admin_client))
    want = offline(step_model, seqs)
    total = sum(len(x) for x in seqs.values())
    flags = broker.flags("streamer")[2:]  # Serve gives --bootstrap-servers
    serve = Serve(model_dir, deployment, broker.bootstrap, tmp_path, *flags, "--log-level", "DEBUG",
                  "--kafka-log-level", "DEBUG", *extra, env=env or broker.env("streamer"), client=client)
    try:
        records = read_topic(broker.bootstrap, deployment.output, client=admin_client,
                             isolation="read_committed" if exactly_once else "read_uncommitted",
                             until=lambda rs: count_steps(rs) >= total, timeout_s=90)
        assert_parity(predictions_by_key(records), want, exactly_once=exactly_once)
        assert serve.metrics_url().startswith("http://127.0.0.1:")
        import urllib.request
        with urllib.request.urlopen(serve.metrics_url() + "/metrics", timeout=5) as r:
            scrape = r.read().decode()
        _assert_secret_free(scrape, broker, "/metrics")
        assert not any(sid in scrape for sid in seqs), "/metrics carries stream ids (topic payloads)"
        cmdline = Path(f"/proc/{serve.proc.pid}/cmdline").read_bytes().decode(errors="replace")
        _assert_secret_free(cmdline, broker, "the command line")
    finally:
        assert serve.terminate() == 0, serve.log()[-3000:]
    log = serve.log()
    _assert_secret_free(log, broker, "serve's log")
    if client == "kafka-python":
        assert "Starting KafkaAdminClient with configuration" in log  # kafka-python's DEBUG config line: masked
        assert "'sasl_plain_password': '***'" in log
    else:
        assert "kafka.librdkafka: CONF" in log  # librdkafka's debug contexts: its configuration, redacted
        assert "sasl.password = [redacted]" in log
    return log


def test_serve_at_least_once_as_the_least_privilege_user_on_the_acls_kafka_sh_made(kafka_client, broker, model,
                                                                                   tmp_path):
    """The ACLs are for the default names: the second client's run serves new streams on the same topics and
    group (and restores what the first one checkpointed)."""
    created = broker.streamer("topics", "create", "--partitions", "2", "--kafka-client", kafka_client, user="admin")
    assert created.returncode == 0, created.stderr[-2000:]
    _produce(broker, DEFAULT.input, seed=3 if kafka_client == "kafka-python" else 13)
    d = Deployment("secure")
    d.input, d.output, d.dlq, d.group, d.changelog = (DEFAULT.input, DEFAULT.output, DEFAULT.dlq, "streamer",
                                                       DEFAULT.changelog)
    _serve_and_check(broker, model, d, tmp_path, client=kafka_client)


def test_serve_exactly_once_on_the_documented_acls_with_a_password_file(kafka_client, broker, model, tmp_path):
    d = Deployment("sx", partitions=2)
    topics = Topics(d.input, d.output, d.dlq, d.changelog)
    broker.grant("User:streamer", acls.serve_needs(topics, d.group, exactly_once=True))
    broker.grant("User:producer", acls.producer_needs(d.input))
    created = broker.streamer("topics", "create", *d.args(broker.bootstrap)[2:], "--partitions", "2", user="admin")
    assert created.returncode == 0, created.stderr[-2000:]
    _produce(broker, d.input, seed=5)
    secret = tmp_path / "sasl-password"
    secret.write_text(broker.users["streamer"] + "\n")
    secret.chmod(0o600)
    env = {k: v for k, v in broker.env("streamer").items() if k != "STREAMER_SASL_PASSWORD"}
    _serve_and_check(broker, model, d, tmp_path, "--exactly-once", "--sasl-password-file", str(secret), env=env,
                     exactly_once=True, client=kafka_client)


# --------------------------------------------------------------------------- failures: one line, exit 2, < 30 s


def _serve_fails(broker, model, *args, user="streamer", password=None, flags=None, client="kafka-python"):
    _, model_dir = model
    t0 = time.monotonic()
    cmd = ["serve", "--model", str(model_dir), "--metrics-port", "0", "--kafka-client", client, *args]
    if flags is None:
        result = broker.streamer(*cmd, user=user, password=password, timeout=60)
    else:
        import sys
        from tests.secure_support import REPO
        result = subprocess.run([sys.executable, "-m", "streamer", *cmd, *flags], cwd=REPO,
                                env=broker.env(user, password), capture_output=True, text=True, timeout=60)
    line = _one_line_error(result, time.monotonic() - t0)
    _assert_secret_free(result.stderr, broker, "the error output")
    return line


def test_a_wrong_password_says_authentication_failed_for_that_user_and_mechanism(kafka_client, broker, model):
    line = _serve_fails(broker, model, password="not-the-password", client=kafka_client)
    assert "authentication failed for user 'streamer' with SASL SCRAM-SHA-512" in line
    assert "not-the-password" not in line
    commands = [["topics", "describe", "--kafka-client", kafka_client]]
    if kafka_client == "kafka-python":  # (produce has no --kafka-client)
        commands.append(["produce", "--streams", "1", "--connect-timeout", "5"])
    for cmd in commands:
        t0 = time.monotonic()
        result = broker.streamer(*cmd, user="producer", password="not-the-password", timeout=60)
        assert "authentication failed for user 'producer'" in _one_line_error(result, time.monotonic() - t0)


def test_a_topic_or_group_without_acl_is_named_with_the_missing_operation(kafka_client, broker, model):
    from kafka.errors import TopicAlreadyExistsError

    admin = broker.admin()
    try:
        admin.create_topics({"secret-events": {"num_partitions": 1, "replication_factor": 1}})
    except TopicAlreadyExistsError:
        pass  # the other client's run made it
    finally:
        admin.close()
    line = _serve_fails(broker, model, "--input-topic", "secret-events", client=kafka_client)
    assert "User:streamer may not Read, Describe on topic secret-events" in line
    assert "kafka-acls.sh" in line and "--operation Read" in line
    line = _serve_fails(broker, model, "--group-id", "other-group", "--changelog-topic", DEFAULT.changelog,
                        client=kafka_client)
    assert "User:streamer may not Read on group other-group" in line
    line = _serve_fails(broker, model, "--exactly-once", "--transactional-id", "someone-else", client=kafka_client)
    assert "may not Write, Describe on transactional-id someone-else" in line
    t0 = time.monotonic()
    result = broker.streamer("topics", "create", "--input-topic", "new-events", "--kafka-client", kafka_client,
                             user="streamer")
    assert "may not Create, Describe, DescribeConfigs on topic new-events" in _one_line_error(
        result, time.monotonic() - t0)
    if kafka_client != "kafka-python":
        return  # (produce has no --kafka-client)
    t0 = time.monotonic()
    result = broker.streamer("produce", "--topic", DEFAULT.output, "--streams", "1", user="producer")
    assert "User:producer may not Write, Describe on topic predictions" in _one_line_error(
        result, time.monotonic() - t0)


def test_plaintext_against_the_tls_port_or_an_unknown_ca_says_tls_failed_and_which_file(kafka_client, broker, model,
                                                                                        tmp_path):
    line = _serve_fails(broker, model, password="", flags=["--bootstrap-servers", broker.bootstrap],
                        client=kafka_client)
    assert "TLS failed" in line and "expects TLS (SASL_SSL)" in line and "--ssl-cafile" in line
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
                    "-keyout", str(tmp_path / "other-ca.key"), "-out", str(other_ca)], check=True, capture_output=True)
    flags = [f if f != broker.ca else str(other_ca) for f in broker.flags("streamer")]
    line = _serve_fails(broker, model, flags=flags, client=kafka_client)
    assert "TLS failed" in line and f"not trusted with --ssl-cafile {other_ca}" in line
    assert "pass the CA that signed the broker's certificate with --ssl-cafile" in line


def test_a_secured_broker_that_is_down_is_still_retried(kafka_client, broker, model, tmp_path):
    from tests.secure_support import free_port

    _, model_dir = model
    d = Deployment("down")
    flags = broker.flags("streamer")[2:]
    serve = Serve(model_dir, d, f"127.0.0.1:{free_port()}", tmp_path, *flags, env=broker.env("streamer"),
                  client=kafka_client)
    try:
        deadline = time.monotonic() + 20
        while serve.metric("streamer_kafka_errors_total", kind="connect") < 1:
            assert serve.proc.poll() is None, serve.log()[-3000:]
            assert time.monotonic() < deadline, serve.log()[-3000:]
            time.sleep(0.5)
        assert serve.healthz() == 503
    finally:
        assert serve.terminate() == 0, serve.log()[-3000:]


# --------------------------------------------------------------------------- confluent-kafka (librdkafka)


def _first_error(client_factory, conf, seconds: float = 10.0):
    """The first error librdkafka reports through error_cb."""
    errors = []
    client = client_factory({**conf, "error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + seconds
    while not errors and time.monotonic() < deadline:
        client.poll(0.2)
    if hasattr(client, "close"):
        client.close()
    assert errors, "librdkafka reported no error"
    return errors[0]


def test_confluent_kafka_errors_are_classified(broker, tmp_path):
    ck = pytest.importorskip("confluent_kafka")
    from streamer.kafka.config import Connection

    needs = acls.serve_needs(DEFAULT, "other-group", exactly_once=True, transactional_id="not-ours")
    # wrong password: _AUTHENTICATION
    err = _first_error(ck.Producer, broker.confluent("streamer", password="wrong"))
    assert err.name() == "_AUTHENTICATION"
    line = explain(err, broker.connection("streamer", password="wrong"), needs)
    assert line.startswith("authentication failed for user 'streamer' with SASL SCRAM-SHA-512")
    # unknown CA (the system's): _SSL
    conf = {k: v for k, v in broker.confluent("streamer").items() if k != "ssl.ca.location"}
    err = _first_error(ck.Producer, conf)
    assert err.name() == "_SSL"
    line = explain(err, broker.connection("streamer", ssl_cafile=None), needs)
    assert line.startswith("TLS failed") and "not trusted" in line
    # PLAINTEXT against the TLS port
    err = _first_error(ck.Producer, {"bootstrap.servers": broker.bootstrap})
    assert err.name() in ("_TRANSPORT", "_ALL_BROKERS_DOWN")
    line = explain(err, Connection(broker.bootstrap), needs)
    assert line.startswith("TLS failed") and "expects TLS (SASL_SSL)" in line
    # a broker that is down: retry
    from tests.secure_support import free_port
    down = f"127.0.0.1:{free_port()}"
    err = _first_error(ck.Producer, broker.confluent("streamer", **{"bootstrap.servers": down}))
    assert explain(err, broker.connection("streamer", bootstrap=down), needs) is None

    # a topic it may not write: the delivery report names it
    producer = ck.Producer(broker.confluent("producer", log_level=0))
    reports = []
    producer.produce(DEFAULT.output, b"x", on_delivery=lambda e, m: reports.append((e, m.topic())))
    producer.flush(15)
    (err, topic), = reports
    assert err.name() == "TOPIC_AUTHORIZATION_FAILED"
    line = explain(err, broker.connection("producer"), acls.producer_needs(DEFAULT.output), topic=topic)
    assert "User:producer may not Write, Describe on topic predictions" in line
    # a group it may not join
    consumer = ck.Consumer(broker.confluent("streamer", **{"group.id": "other-group", "log_level": 0}))
    consumer.subscribe([DEFAULT.input])
    err = None
    deadline = time.monotonic() + 20
    while err is None and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error():
            err = msg.error()
    consumer.close()
    assert err is not None and err.name() == "GROUP_AUTHORIZATION_FAILED"
    assert "User:streamer may not Read on group other-group" in explain(err, broker.connection("streamer"), needs)
    # a transactional id it may not use
    producer = ck.Producer(broker.confluent("streamer", **{"transactional.id": "not-ours", "log_level": 0}))
    with pytest.raises(ck.KafkaException) as raised:
        producer.init_transactions(15)
    assert raised.value.args[0].name() == "TRANSACTIONAL_ID_AUTHORIZATION_FAILED"
    line = explain(raised.value, broker.connection("streamer"), needs)
    assert "may not Write, Describe on transactional-id not-ours" in line

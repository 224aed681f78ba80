"""The compose stack's own commands, run as local processes against the real broker (kafka marker).

The commands are taken FROM docker-compose.yml, with the variables compose uses set to small values
(tiny model, few streams) and only these substitutions: the broker address (kafka:9092 -> the local
broker), the model volume (/models -> a temp dir), unique topic and group names, free metrics ports on
127.0.0.1 (the containers bind 0.0.0.0, the tests never do). Then:

- trainer (through its skip-if-present entrypoint, twice: the second run skips), converter, topic-init,
  two `streamer serve` replicas, the load generator (bounded by --events);
- predictions flow: one prediction record per event, every stream's steps covered;
- the image's HEALTHCHECK command, run as is, passes against a ready replica and fails on a dead port;
- a real Prometheus (Debian's binary, 127.0.0.1, temp config derived from deploy/prometheus with the
  DNS discovery swapped for the two local ports) scrapes both replicas, loads the alert rules, and a
  PromQL query sees predictions > 0; every dashboard query evaluates;
- every metric name used by the dashboard and the alerts exists in a live scrape (and in Prometheus).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict

import pytest
import yaml

from tests import deploy_support as ds
from tests import kafka_support

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# The variables compose reads, set small; the same names and meaning as in docker-compose.yml.
SMALL = {"TRAIN_EPOCHS": "1", "TRAIN_SEQUENCES": "32", "TRAIN_EVAL_SEQUENCES": "0", "PARTITIONS": "2",
         "LOAD_STREAMS": "20", "LOAD_RATE": "2000", "LOAD_CHUNK": "3", "LOAD_MAX_LEN": "30"}
EVENTS = 400  # the load generator runs continuously in compose; the test bounds it with --events


class Stack:
    """The services' commands after substitution, and the processes started from them."""

    def __init__(self, tmp, bootstrap: str):
        self.tmp = tmp
        self.bootstrap = bootstrap
        token = kafka_support.unique_name("dep")
        self.token = token
        self.group = f"{token}-g"
        self.topics = {"events": f"{token}-events", "predictions": f"{token}-predictions",
                       "events.dlq": f"{token}-events.dlq"}
        self.models = tmp / "models"
        self.models.mkdir()
        self.services = ds.load_compose({**SMALL, "GROUP_ID": self.group})["services"]
        self.procs: list[ds.Proc] = []
        self.ports: list[int] = []

    def substitute(self, argv: list[str]) -> list[str]:
        out = []
        for token in argv:
            if token == "kafka:9092":
                token = self.bootstrap
            elif token in self.topics:
                token = self.topics[token]
            elif token == "/models" or token.startswith("/models/"):
                token = str(self.models) + token[len("/models"):]
            elif "/models/" in token:  # inside the trainer's entrypoint script
                token = token.replace("/models/", str(self.models) + "/")
            out.append(token)
        return out

    def env(self, service: str, extra: dict | None = None) -> dict:
        bindir = os.path.dirname(sys.executable)  # `streamer` and `python` of this checkout first on PATH
        return ds.child_env({**ds.service_environment(self.services[service]),
                             "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), **(extra or {})})

    def argv(self, service: str) -> list[str]:
        return self.substitute(ds.service_argv(self.services[service]))

    def run_once(self, service: str, timeout: float, use_entrypoint: bool = False) -> subprocess.CompletedProcess:
        argv = self.argv(service)
        if use_entrypoint:
            argv = self.substitute(list(self.services[service]["entrypoint"])) + argv
        else:
            argv = ds.streamer_argv(argv)
        r = subprocess.run(argv, env=self.env(service), capture_output=True, text=True, timeout=timeout,
                           cwd=self.tmp)
        assert r.returncode == 0, f"{service}: {argv}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    def start_serve(self, i: int) -> tuple[ds.Proc, int]:
        port = ds.free_port()
        argv = self.argv("streamer")
        argv[argv.index("--metrics-port") + 1] = str(port)
        argv[argv.index("--metrics-host") + 1] = "127.0.0.1"
        # each container has its own host name, hence its own default --instance-id; here they share one host
        env = {"STREAMER_METRICS_PORT": str(port), "STREAMER_INSTANCE_ID": f"streamer-replica-{i}-{self.group}"}
        proc = ds.Proc(ds.streamer_argv(argv), self.tmp / f"serve-{i}.log", env=self.env("streamer", env),
                       cwd=self.tmp)
        self.procs.append(proc)
        self.ports.append(port)
        return proc, port

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, kafka_bootstrap):
    tmp = tmp_path_factory.mktemp("stack")
    s = Stack(tmp, kafka_bootstrap)
    admin = kafka_support.make_admin(kafka_bootstrap)
    t0 = time.monotonic()
    try:
        s.timings = {}
        r = s.run_once("trainer", timeout=300, use_entrypoint=True)
        s.timings["trainer"] = time.monotonic() - t0
        s.trainer_output = r.stdout + r.stderr
        t = time.monotonic()
        s.trainer_again = s.run_once("trainer", timeout=60, use_entrypoint=True)
        s.timings["trainer (skipped)"] = time.monotonic() - t
        t = time.monotonic()
        s.run_once("converter", timeout=300)
        s.timings["converter"] = time.monotonic() - t
        t = time.monotonic()
        s.topic_init = s.run_once("topic-init", timeout=120)
        s.timings["topic-init"] = time.monotonic() - t
        t = time.monotonic()
        for i in range(2):
            s.start_serve(i)
        for proc, port in zip(s.procs, s.ports):
            def ready(proc=proc, port=port):
                if not proc.alive():
                    raise AssertionError(f"serve exited:\n{proc.output()[-3000:]}")
                return ds.http_get(f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200
            ds.wait_for(ready, 120, what=f"serve on {port} /healthz")
        s.timings["2 x serve ready"] = time.monotonic() - t
        t = time.monotonic()
        argv = ds.streamer_argv(s.argv("loadgen")) + ["--events", str(EVENTS), "--seed", "7"]
        s.produce = subprocess.run(argv, env=s.env("loadgen"), capture_output=True, text=True, timeout=120)
        assert s.produce.returncode == 0, s.produce.stderr
        s.timings["loadgen"] = time.monotonic() - t
        t = time.monotonic()
        s.predictions = _read_predictions(kafka_bootstrap, s.topics["predictions"], EVENTS, timeout=90)
        s.timings["predictions read"] = time.monotonic() - t
        print("stack timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in s.timings.items()), file=sys.stderr)
        yield s
    finally:
        s.stop()
        names = [n for n in admin.list_topics() if s.token in n]
        kafka_support.delete_topics(admin, names)
        admin.close()


def _read_predictions(bootstrap: str, topic: str, count: int, timeout: float) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    try:
        return kafka_support.poll_records(consumer, count, timeout_s=timeout)
    finally:
        consumer.close()


# --------------------------------------------------------------------------- the pipeline


def test_trainer_skips_when_the_model_is_there(stack):
    assert (stack.models / "default" / "model.keras").is_file()
    assert "exists; skipping" in stack.trainer_again.stdout
    assert (stack.models / "default-step" / "step_model.json").is_file()


def test_topic_init_created_the_topics_with_the_partitions_variable(stack, kafka_admin):
    changelog = f"{stack.group}-{stack.topics['events']}-changelog"  # named after serve's --group-id
    names = [*stack.topics.values(), changelog]
    counts = {t["name"]: len(t["partitions"]) for t in kafka_admin.describe_topics(names)}
    assert counts == {name: int(SMALL["PARTITIONS"]) for name in names}


def test_predictions_flow_for_every_event(stack):
    produced = stack.produce.stderr
    assert f"{EVENTS} events" in produced
    records = stack.predictions
    assert len(records) == EVENTS, f"{len(records)} predictions for {EVENTS} events"
    steps = defaultdict(list)
    assert len({(r.key, json.loads(r.value)["step"]) for r in records}) == EVENTS  # no duplicates
    for r in records:
        p = json.loads(r.value)
        assert r.key.decode() == p["stream_id"]
        rows = p["predictions"] if "predictions" in p else [p["prediction"]]
        assert all(len(row) == 2 for row in rows)
        steps[p["stream_id"]].append((p["step"], len(rows)))
    for sid, items in steps.items():  # each stream's predictions cover its steps without holes
        items.sort()
        covered = 0
        for step, n in items:
            assert step == covered, sid
            covered += n


def test_both_replicas_serve_partitions_and_predict(stack):
    def split():  # the group may still be settling the second replica's assignment
        per_replica = []
        for port in stack.ports:
            text = ds.http_get(f"http://127.0.0.1:{port}/metrics")[1].decode()
            per_replica.append((ds.scrape_value(text, "streamer_kafka_assigned_partitions"),
                                ds.scrape_value(text, "streamer_predictions_total")))
        ok = sum(p for p, _ in per_replica) == int(SMALL["PARTITIONS"]) and all(p >= 1 for p, _ in per_replica)
        return per_replica if ok else None

    per_replica = ds.wait_for(split, 60, what="each replica to own a partition")
    assert sum(n for _, n in per_replica) > 0


def test_image_healthcheck_command_reflects_readiness(stack):
    argv = ds.healthcheck_argv()
    assert argv[0] == "python"
    argv = [sys.executable, *argv[1:]]
    env = ds.child_env({"STREAMER_METRICS_PORT": str(stack.ports[0])})
    assert subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode == 0
    env = ds.child_env({"STREAMER_METRICS_PORT": str(ds.free_port())})  # nothing listens there
    assert subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode != 0


# --------------------------------------------------------------------------- metrics and Prometheus


def test_every_dashboard_and_alert_metric_exists_in_a_live_scrape(stack):
    kinds = ds.scrape_families(f"http://127.0.0.1:{stack.ports[0]}/metrics")
    used = {}
    for where, expr in ds.dashboard_exprs() + ds.alert_exprs():
        for name in ds.promql_metric_names(expr):
            used.setdefault(name, where)
    assert len(used) >= 15
    missing = {name: where for name, where in used.items() if ds.family_of(name, kinds) is None}
    assert not missing, f"metrics used but not exposed by streamer serve: {missing}"
    # and the check is not vacuous: a renamed metric is caught
    assert ds.family_of("streamer_predictions_made_total", kinds) is None


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    if ds.prometheus_binary() is None:
        pytest.skip("needs the prometheus server: run `make prometheus` (Debian's prometheus package)")
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((ds.PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    port = ds.free_port()  # chosen first: the self-scrape job needs it
    for job in config["scrape_configs"]:
        if job["job_name"] == "streamer":
            job.pop("dns_sd_configs")  # the compose DNS name does not exist here: the same job, static targets
            job["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in stack.ports]}]
        else:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    rules = {name: (ds.PROMETHEUS_DIR / name).read_text() for name in config["rule_files"]}
    server = ds.PrometheusServer(config, work, rule_files=rules, port=port)
    try:
        server.wait_ready()

        def both_scraped():
            up = server.query('count(up{job="streamer"} == 1)')
            return up and float(up[0]["value"][1]) == len(stack.ports)

        ds.wait_for(both_scraped, 30, what="both replicas scraped")
        yield server
    finally:
        rc = server.stop()
        assert rc is not None
        shutil.rmtree(work / "data", ignore_errors=True)


def test_prometheus_scrapes_both_replicas_and_sees_predictions(prometheus, stack):
    def predictions():
        result = prometheus.query('sum(streamer_predictions_total{job="streamer"})')
        return result and float(result[0]["value"][1]) > 0

    ds.wait_for(predictions, 60, what="predictions > 0 through PromQL")
    up = prometheus.query('count(up{job="streamer"} == 1)')
    assert float(up[0]["value"][1]) == 2
    total = float(prometheus.query("sum(streamer_predictions_total)")[0]["value"][1])
    assert total >= EVENTS  # at least one step per event (chunks of up to LOAD_CHUNK steps)


def test_alert_rules_load_and_evaluate_in_the_server(prometheus):
    def evaluated():
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = ds.wait_for(evaluated, 30, what="the alert rules to be evaluated")
    assert {r["name"] for r in rules} == {name for name, _ in ds.alert_exprs()}
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad
    firing = {r["name"] for r in rules if r.get("state") == "firing"}
    assert "StreamerDown" not in firing and "StreamerNoReplicas" not in firing


def test_every_dashboard_query_evaluates_and_names_stored_series(prometheus):
    names = set(prometheus.api("label/__name__/values"))
    for title, expr in ds.dashboard_exprs():
        prometheus.query(ds.grafana_to_promql(expr))  # raises on a PromQL error
        for name in ds.promql_metric_names(expr):
            assert name in names, f"{title}: {name} is not stored by Prometheus"
    for alert, expr in ds.alert_exprs():
        for name in ds.promql_metric_names(expr):
            assert name in names, f"{alert}: {name} is not stored by Prometheus"

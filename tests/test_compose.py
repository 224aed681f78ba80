"""docker-compose.yml, Dockerfile and .dockerignore, checked as data (no Docker engine needed).

- services, their dependencies (with conditions) and health checks;
- volumes and ports: named volumes declared, mounts match what the commands read and write, nothing
  published by the scalable service;
- every service command is a real `streamer` invocation whose flags parse with the real CLI parser
  (variables resolved to their defaults, and to the small values the integration test uses);
- the Dockerfile: slim base, non-root USER, HEALTHCHECK on /healthz with python's urllib.
"""

from __future__ import annotations

import fnmatch
import re

import pytest
import yaml

from tests import deploy_support as ds

STREAMER_ROLES = ("topic-init", "trainer", "converter", "streamer", "loadgen")
SMALL = {"TRAIN_EPOCHS": "1", "TRAIN_SEQUENCES": "32", "TRAIN_EVAL_SEQUENCES": "0", "PARTITIONS": "3",
         "LOAD_STREAMS": "20", "LOAD_RATE": "500", "LOAD_CHUNK": "3", "LOAD_MAX_LEN": "30"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return ds.load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


# --------------------------------------------------------------------------- services and order


def test_services_present(services):
    assert set(services) == {"kafka", "topic-init", "trainer", "converter", "streamer", "loadgen", "prometheus",
                             "grafana"}


def test_kafka_is_single_node_kraft_matching_the_local_broker(services):
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:4.4.0"  # the version deploy/kafka-local runs (pom.xml)
    env = ds.service_environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols) and set(advertised) <= set(listeners)
    assert advertised["PLAINTEXT"] == "kafka:9092"  # what containers use
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners and "CONTROLLER" not in advertised
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == "1"
    pom = (ds.REPO / "deploy" / "kafka-local" / "pom.xml").read_text()
    assert re.search(r"<kafka.version>(.*?)</kafka.version>", pom).group(1) == kafka["image"].split(":")[1]
    # the host listener's advertised port is the published one
    host_port = advertised["HOST"].rsplit(":", 1)[1]
    published = [p for p in kafka["ports"] if p.endswith(":" + listeners["HOST"].rsplit(":", 1)[1])]
    assert published and published[0].split(":")[1] == host_port


def test_dependencies_and_conditions(services):
    expected = {
        "topic-init": {"kafka": "service_healthy"},
        "trainer": {},
        "converter": {"trainer": "service_completed_successfully"},
        "streamer": {"kafka": "service_healthy", "topic-init": "service_completed_successfully",
                     "converter": "service_completed_successfully"},
        "loadgen": {"topic-init": "service_completed_successfully", "streamer": "service_healthy"},
        "prometheus": {},
        "grafana": {"prometheus": "service_healthy"},
        "kafka": {},
    }
    for name, deps in expected.items():
        assert ds.depends_on(services[name]) == deps, name
    # every service_healthy dependency has a health check; one-shot ones never restart
    for name, svc in services.items():
        for dep, cond in ds.depends_on(svc).items():
            if cond == "service_healthy":
                assert not services[dep].get("healthcheck", {}).get("disable"), dep
                assert services[dep]["healthcheck"]["test"], dep
            if cond == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", dep


def test_health_checks(services):
    assert "kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])
    assert "/-/ready" in " ".join(services["prometheus"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(services["grafana"]["healthcheck"]["test"])
    # the streamer's is the image's HEALTHCHECK (python urllib on /healthz), verbatim
    test = services["streamer"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:] == ds.healthcheck_argv()
    # roles without a /healthz server must not inherit the image's health check
    for name in ("topic-init", "trainer", "converter", "loadgen"):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_streamer_is_scalable(services):
    svc = services["streamer"]
    assert "container_name" not in svc and "ports" not in svc and "hostname" not in svc
    assert int(svc["deploy"]["replicas"]) >= 2
    for name, other in services.items():
        assert "container_name" not in other, name


def test_published_ports_bind_loopback_by_default_and_do_not_clash(services):
    seen = set()
    for name, svc in services.items():
        for spec in svc.get("ports", []):
            host_ip, host_port, container_port = str(spec).split(":")
            assert host_ip == "127.0.0.1", f"{name}: {spec} (nothing listens on 0.0.0.0 by default)"
            assert host_port not in seen
            seen.add(host_port)
    assert seen == {"9094", "9090", "3000"}


# --------------------------------------------------------------------------- volumes and mounts


def _mounts(svc) -> dict[str, str]:
    out = {}
    for spec in svc.get("volumes", []):
        parts = spec.split(":")
        out[parts[1]] = parts[0]
    return out


def test_named_volumes_declared_and_used(compose, services):
    declared = set(compose["volumes"])
    used = set()
    for name, svc in services.items():
        for target, source in _mounts(svc).items():
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
            else:
                assert (ds.REPO / source).exists(), f"{name}: bind mount {source} missing"
    assert used == declared


def test_model_paths_flow_from_trainer_to_converter_to_serve(services):
    train = ds.parse_streamer_command(ds.service_argv(services["trainer"]))
    convert = ds.parse_streamer_command(ds.service_argv(services["converter"]))
    serve = ds.parse_streamer_command(ds.service_argv(services["streamer"]))
    assert convert.path == train.out and serve.model == convert.out
    for role, path in (("trainer", train.out), ("converter", convert.out), ("streamer", serve.model)):
        mounts = _mounts(services[role])
        assert any(path.startswith(target + "/") for target in mounts), f"{role}: {path} not on a volume"
        assert mounts["/models"] == "models"
    assert services["streamer"]["volumes"][0].endswith(":ro")  # replicas only read the model
    # the trainer skips when the model file is there
    entry = " ".join(services["trainer"]["entrypoint"])
    assert f"{train.out}/model.keras" in entry and 'exec "$@"' in entry


def test_grafana_and_prometheus_mount_the_repository_config(services):
    prom = _mounts(services["prometheus"])
    assert prom["/etc/prometheus"] == "./deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    graf = _mounts(services["grafana"])
    assert graf["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    dash_dir = graf["/etc/grafana/dashboards"]
    provider = yaml.safe_load((ds.GRAFANA_DIR / "provisioning/dashboards/streamer.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    home = ds.service_environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ds.REPO / dash_dir / home.rsplit("/", 1)[1]).is_file()
    datasource = yaml.safe_load((ds.GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


# --------------------------------------------------------------------------- commands


@pytest.mark.parametrize("env", [{}, SMALL], ids=["defaults", "small"])
def test_every_streamer_command_parses(env):
    services = ds.load_compose(env)["services"]
    for name in STREAMER_ROLES:
        argv = ds.service_argv(services[name])
        assert argv[0] == "streamer", name
        args = ds.parse_streamer_command(argv, ds.service_environment(services[name]))
        assert args.command == argv[1] and callable(args.func), name


def test_commands_agree_on_topics_brokers_and_ports(services):
    parsed = {n: ds.parse_streamer_command(ds.service_argv(services[n]), ds.service_environment(services[n]))
              for n in STREAMER_ROLES}
    serve, init, load = parsed["streamer"], parsed["topic-init"], parsed["loadgen"]
    kafka_env = ds.service_environment(services["kafka"])
    advertised = dict(item.split("://") for item in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    for args in (serve, init, load):
        assert args.bootstrap_servers == advertised["PLAINTEXT"]
    assert load.topic == serve.input_topic
    # the same four topics, the changelog included (its name derives from the group id)
    from streamer.kafka.config import topics_from_args

    assert topics_from_args(init) == topics_from_args(serve)
    assert init.group_id == serve.group_id
    assert init.partitions == 6  # ${PARTITIONS:-6}
    assert serve.metrics_host == "0.0.0.0"  # inside the container only: no port is published
    assert serve.metrics_port == int(ds.service_environment(services["streamer"])["STREAMER_METRICS_PORT"])
    assert str(serve.metrics_port) in services["streamer"]["expose"]
    prom = yaml.safe_load((ds.PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "streamer")
    assert job["dns_sd_configs"] == [{"names": ["streamer"], "type": "A", "port": serve.metrics_port,
                                      "refresh_interval": "10s"}]
    assert load.continuous and load.end  # a steady load whose streams end (state is freed)


def test_the_replicas_serve_with_librdkafka_which_the_image_installs(services):
    serve = ds.parse_streamer_command(ds.service_argv(services["streamer"]),
                                      ds.service_environment(services["streamer"]))
    assert serve.kafka_client == "confluent"
    runs = [arg for op, arg in ds.dockerfile_instructions() if op == "RUN"]
    assert any('pip install ".[confluent]"' in arg for arg in runs), "the image must install the confluent extra"


def test_variables_are_interpolated_and_documented():
    text = ds.compose_text()
    used = ds.variables(text)
    assert {"PARTITIONS", "TRAIN_EPOCHS", "LOAD_RATE", "STREAMER_REPLICAS", "BIND_ADDRESS"} <= set(used)
    header = text.split("\nname:", 1)[0]
    documented = dict(re.findall(r"^#   ([A-Z_]+) +(\S+)", header, flags=re.M))
    assert set(documented) == set(used), "document every variable in the header (and only those)"
    for name, default in used.items():
        assert default is not None, f"${{{name}}} needs a default"
        assert documented[name] == default, f"{name}: documented {documented[name]}, compose uses {default}"
    small = ds.load_compose(SMALL)["services"]
    train = ds.parse_streamer_command(ds.service_argv(small["trainer"]))
    assert (train.epochs, train.sequences, train.eval_sequences) == (1, 32, 0)


def test_interpolation_rules():
    env = {"A": "x", "E": ""}
    assert ds.interpolate("${A}-${B:-d}-${E:-e}-${E-f}-$$A-${B+alt}-${A+alt}", env) == "x-d-e--$A--alt"
    with pytest.raises(KeyError):
        ds.interpolate("${B:?set B}", env)


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_sanity():
    ins = ds.dockerfile_instructions()
    words = [w for w, _ in ins]
    assert ins[0] == ("FROM", "python:3.11-slim")
    users = [rest for w, rest in ins if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")  # nothing runs as root after
    hc = ds.healthcheck_argv()
    assert hc[:2] == ["python", "-c"] and "urllib.request" in hc[2] and "/healthz" in hc[2]
    assert "curl" not in " ".join(hc) and "wget" not in " ".join(hc)
    assert "STREAMER_METRICS_PORT" in hc[2]
    exposed = [rest for w, rest in ins if w == "EXPOSE"]
    assert exposed == ["9100"]


def test_dockerfile_copies_only_what_dockerignore_keeps():
    patterns = [line.strip() for line in ds.DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:  # Docker's rule: the last matching pattern wins
        result = False
        for pat in patterns:
            negate = pat.startswith("!")
            pat = pat.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or (
                    pat.startswith("**/") and fnmatch.fnmatch(path.rsplit("/", 1)[-1], pat[3:])):
                result = not negate
        return result

    sources = []
    for word, rest in ds.dockerfile_instructions():
        if word == "COPY" and "--from" not in rest:
            sources += rest.split()[:-1]
    assert sources
    for src in sources:
        assert not ignored(src), src
        assert (ds.REPO / src).exists() or src == "README.md", src
    for junk in (".git", ".venv", ".kafka", "runs", "tests", "deploy/kafka-local/lib", "models/x.keras",
                 "streamer/__pycache__/cli.cpython-311.pyc"):
        assert ignored(junk), junk

"""docker-compose.secure.yml, checked like docker-compose.yml (as data, no Docker engine), merged over it the way
Compose merges an override file:

- every service command still parses with the real CLI parser, with its (merged) environment;
- passwords only as compose secrets (files under /run/secrets), never in the environment or a command line;
  every secret a service names is declared, and made by deploy/compose-secure/make-secrets.sh;
- every Kafka listener authenticates (no PLAINTEXT), ACLs are enforced; the ACLs acl-init grants cover what
  the streamer and loadgen services need (streamer.kafka.acls), each service runs as its own user;
- the Kafka container's start script, run outside Docker on the secrets make-secrets.sh made, writes a
  configuration that Kafka's own storage tool accepts and formats with the SCRAM users (no password in its
  output, its files mode 600).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streamer.kafka import acls
from tests import deploy_support as ds

OVERRIDE = ds.REPO / "docker-compose.secure.yml"
SECURE_DIR = ds.REPO / "deploy" / "compose-secure"
STREAMER_ROLES = ("topic-init", "acl-init", "trainer", "converter", "streamer", "loadgen")
LISTS_MERGED = ("ports", "expose", "secrets", "volumes")  # Compose appends these; other lists are replaced


def _merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if key in out and key in LISTS_MERGED and isinstance(out[key], list) and isinstance(value, list):
                out[key] = out[key] + [v for v in value if v not in out[key]]
            else:
                out[key] = _merge(out[key], value) if key in out else value
        return out
    return over


def load_secure(env: dict | None = None) -> dict:
    over = ds.interpolate_tree(yaml.safe_load(OVERRIDE.read_text()), dict(env or {}))
    return _merge(ds.load_compose(env), over)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_secure()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _parsed(services, name):
    return ds.parse_streamer_command(ds.service_argv(services[name]), ds.service_environment(services[name]))


def test_every_streamer_command_parses_and_runs_as_its_own_user(services):
    assert set(services) == {"kafka", "topic-init", "acl-init", "trainer", "converter", "streamer", "loadgen",
                             "prometheus", "grafana"}
    users = {}
    for name in STREAMER_ROLES:
        args = _parsed(services, name)
        assert callable(args.func), name
        if hasattr(args, "security_protocol") and name not in ("trainer", "converter"):
            assert args.security_protocol == "SASL_SSL" and args.sasl_mechanism == "SCRAM-SHA-512", name
            assert args.ssl_cafile == "/run/secrets/kafka_ca", name
            users[name] = args.sasl_username
    assert users == {"topic-init": "admin", "acl-init": "admin", "streamer": "streamer", "loadgen": "producer"}
    assert ds.depends_on(services["streamer"])["acl-init"] == "service_completed_successfully"
    assert ds.depends_on(services["loadgen"])["acl-init"] == "service_completed_successfully"
    assert ds.depends_on(services["acl-init"]) == {"kafka": "service_healthy"}


def test_passwords_are_compose_secrets_only(compose, services):
    declared = compose["secrets"]
    for name, svc in services.items():
        env = ds.service_environment(svc)
        if name != "grafana":  # its admin password (GRAFANA_ADMIN_PASSWORD) is docker-compose.yml's business
            assert not any(k.endswith(("_PASSWORD", "_PASS")) for k in env), name
        argv = " ".join(ds.service_argv(svc))
        assert "password" not in argv.lower() or name == "kafka", name
        for key in ("STREAMER_SASL_PASSWORD_FILE", "STREAMER_SSL_CAFILE"):
            if key in env:
                secret = env[key].removeprefix("/run/secrets/")
                assert env[key].startswith("/run/secrets/") and secret in svc["secrets"], (name, key)
        for secret in svc.get("secrets", []):
            assert secret in declared, (name, secret)
    for secret in declared.values():
        assert Path(secret["file"]).parent == Path("./deploy/compose-secure/secrets")
    assert re.search(r"^/deploy/compose-secure/secrets/$", (ds.REPO / ".gitignore").read_text(), re.M)
    for path in ("docker-compose.yml", "docker-compose.secure.yml"):
        assert not re.search(r"(?i)password[ \t]*[:=][ \t]*\w", (ds.REPO / path).read_text().replace(
            "GRAFANA_ADMIN_PASSWORD", "")), path


def test_every_kafka_listener_authenticates_and_acls_are_enforced(services):
    env = ds.service_environment(services["kafka"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    assert set(listeners) == set(protocols)
    assert set(protocols.values()) <= {"SASL_SSL", "SSL"}
    assert protocols[env["KAFKA_CONTROLLER_LISTENER_NAMES"]] == "SSL"
    assert env["KAFKA_LISTENER_NAME_CONTROLLER_SSL_CLIENT_AUTH"] == "required"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert set(env["KAFKA_SUPER_USERS"].split(";")) == {"User:admin", "User:CN=kafka"}
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert _parsed(services, "streamer").bootstrap_servers == advertised["SASL_SSL"]
    assert services["kafka"]["healthcheck"]["test"][-1] == "health"


def test_acl_init_grants_what_the_services_need(services):
    from streamer.kafka.config import topics_from_args

    grant = _parsed(services, "acl-init")
    serve = _parsed(services, "streamer")
    load = _parsed(services, "loadgen")
    granted = acls.serve_needs(topics_from_args(grant), grant.group_id, exactly_once=grant.exactly_once,
                               transactional_id=grant.transactional_id)
    needed = acls.serve_needs(topics_from_args(serve), serve.group_id, exactly_once=True)
    assert set(needed) <= set(granted)
    assert grant.principal == f"User:{serve.sasl_username}"
    assert grant.producer_principal == f"User:{load.sasl_username}" and load.topic == grant.input_topic


def test_override_variables_are_documented():
    text = OVERRIDE.read_text()
    header = text.split("\nx-kafka-client:", 1)[0]
    documented = dict(re.findall(r"^#   ([A-Z_]+) +(\S+)", header, flags=re.M))
    base = ds.variables(ds.compose_text())
    for name, default in ds.variables(text).items():
        assert name in documented or name in base, f"document ${{{name}}}"
        assert default == documented.get(name, base.get(name)), name


def _can_run_java() -> str | None:
    have_jars = any((ds.REPO / "deploy" / "kafka-local" / "lib").glob("kafka_2.13-*.jar"))
    if not (shutil.which("java") and shutil.which("openssl") and have_jars):
        return "needs java, openssl and the jars in deploy/kafka-local/lib (make kafka-up fetches them)"
    return None


@pytest.mark.slow
def test_the_kafka_start_script_formats_with_the_scram_users_on_the_secrets_made(compose, services, tmp_path):
    why = _can_run_java()
    if why:
        pytest.skip(why)
    made = tmp_path / "made"
    out = subprocess.run(["bash", str(SECURE_DIR / "make-secrets.sh"), str(made)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert oct(made.stat().st_mode & 0o777) == "0o700"
    assert oct((made / "admin.properties").stat().st_mode & 0o777) == "0o600"
    run_secrets = tmp_path / "run-secrets"  # what /run/secrets holds in the container
    run_secrets.mkdir()
    for name, spec in compose["secrets"].items():
        source = made / Path(spec["file"]).name
        assert source.is_file(), f"make-secrets.sh does not make {spec['file']}"
        (run_secrets / name).symlink_to(source)
    passwords = [(made / f"{u}.password").read_text().strip() for u in ("admin", "streamer", "producer")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env.update(ds.service_environment(services["kafka"]))
    env.update(KAFKA_LOG_DIRS=str(tmp_path / "data"), KAFKA_SECRETS_DIR=str(run_secrets),
               KAFKA_RUN_DIR=str(tmp_path / "run"), KAFKA_LIBS=str(ds.REPO / "deploy" / "kafka-local" / "lib"),
               KAFKA_SSL_KEYSTORE_LOCATION=str(run_secrets / "kafka_keystore"),
               KAFKA_SSL_TRUSTSTORE_LOCATION=str(run_secrets / "kafka_ca"))
    formatted = subprocess.run(["bash", str(SECURE_DIR / "kafka-run.sh"), "format"], env=env, capture_output=True,
                               text=True, timeout=120)
    assert formatted.returncode == 0, formatted.stdout[-2000:] + formatted.stderr[-2000:]
    assert (tmp_path / "data" / "meta.properties").is_file()
    for text in (formatted.stdout, formatted.stderr):
        assert not any(p in text for p in passwords)
    conf = (tmp_path / "run" / "server.properties").read_text()
    assert oct((tmp_path / "run" / "server.properties").stat().st_mode & 0o777) == "0o600"
    assert not list((tmp_path / "run").glob("format.args"))
    assert "allow.everyone.if.no.acl.found=false" in conf
    assert "listener.name.controller.ssl.client.auth=required" in conf
    assert f'username="admin" password="{passwords[0]}"' in conf

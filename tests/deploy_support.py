"""Helpers for the deployment tests: docker-compose.yml as data, PromQL metric names, local processes.

No Docker engine is needed: the compose file is parsed with pyyaml, variables are interpolated the way
Compose does (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?msg}``, ``$$``), and the
services' own commands are run as local processes. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "streamer.json"

# --------------------------------------------------------------------------- compose interpolation

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}"
                  r"|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution on one string (unset variables use their defaults)."""

    def sub(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4)
        value = env.get(name)
        if op is None:
            return value or ""
        unset = value is None or (op.startswith(":") and value == "")
        kind = op[-1]
        if kind == "-":
            return interpolate(arg, env) if unset else value
        if kind == "?":
            if unset:
                raise KeyError(f"required variable {name} is missing: {arg}")
            return value
        return "" if unset else interpolate(arg, env)  # "+": alternative value

    return _VAR.sub(sub, text)


def interpolate_tree(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def variables(text: str) -> dict[str, str | None]:
    """Every variable the text uses, with its default (None when it has none)."""
    out: dict[str, str | None] = {}
    for m in _VAR.finditer(text):
        name = m.group(2) or m.group(5)
        if name:
            default = m.group(4) if m.group(3) in (":-", "-") else None
            if out.get(name) is None:
                out[name] = default
    return out


def compose_text() -> str:
    return COMPOSE_FILE.read_text()


def load_compose(env: dict[str, str] | None = None) -> dict:
    """docker-compose.yml with every variable resolved (defaults, or values from `env`)."""
    raw = yaml.safe_load(compose_text())
    return interpolate_tree(raw, dict(env or {}))


def service_argv(service: dict) -> list[str]:
    """A service's command as an argv list (compose accepts a list or a shell-like string)."""
    cmd = service.get("command")
    if cmd is None:
        return []
    if isinstance(cmd, str):
        import shlex

        return shlex.split(cmd)
    return [str(c) for c in cmd]


def service_environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict) -> dict[str, str]:
    """{dependency: condition} (a plain list means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {d: (spec or {}).get("condition", "service_started") for d, spec in deps.items()}


def parse_streamer_command(argv: list[str], service_env: dict[str, str] | None = None):
    """Parse a `streamer ...` argv with the real CLI parser; returns the argparse Namespace.

    The test process's STREAMER_* variables are hidden while parsing and the service's own
    `environment:` applied instead, so flag defaults come from exactly what the container would see.
    argparse errors (SystemExit) propagate.
    """
    from streamer.cli import build_parser

    if not argv or argv[0] != "streamer":
        raise ValueError(f"not a streamer invocation: {argv!r}")
    saved = {k: v for k, v in os.environ.items() if k.startswith("STREAMER_")}
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in (service_env or {}).items() if k.startswith("STREAMER_")})
        return build_parser().parse_args(argv[1:])
    finally:
        for k in [k for k in os.environ if k.startswith("STREAMER_")]:
            del os.environ[k]
        os.environ.update(saved)


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def healthcheck_argv() -> list[str]:
    """The Dockerfile HEALTHCHECK's exec-form CMD as an argv list."""
    for word, rest in dockerfile_instructions():
        if word == "HEALTHCHECK":
            cmd = rest[rest.index("CMD") + 3:].strip()
            return json.loads(cmd)
    raise AssertionError("no HEALTHCHECK in the Dockerfile")


# --------------------------------------------------------------------------- PromQL metric names

_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")


def promql_metric_names(expr: str, prefix: str = "streamer_") -> set[str]:
    """The metric names (as stored by Prometheus: with _total/_bucket/...) an expression reads."""
    text = _STRING.sub('""', expr)  # label values cannot look like metric names
    text = _BRACES.sub("{}", text)  # matchers: label names are not metric names
    return {m.group(0) for m in _IDENT.finditer(text) if m.group(0).startswith(prefix)}


def family_of(sample_name: str, kinds: dict[str, str]) -> str | None:
    """The metric family a stored series name belongs to, given {family: type} from a scrape.

    Counters are stored as <family>_total, histograms as <family>_bucket/_sum/_count, infos as
    <family>_info, gauges as <family>. Returns None when no family of the right type explains it.
    """
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("", "_sum", "_count"), "info": ("_info",), "gauge": ("",), "unknown": ("",),
                "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount")}
    for family, kind in kinds.items():
        for suffix in suffixes.get(kind, ("",)):
            if sample_name == family + suffix:
                return family
    return None


def scrape_families(url: str) -> dict[str, str]:
    """{family name: type} from a live /metrics endpoint (prometheus_client's own parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every query target in the Grafana dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str) and var.get("type") == "query":
            out.append((f"variable {var.get('name')}", q))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    """(alert name, expr) for every rule in deploy/prometheus/alerts.yml."""
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [(r.get("alert") or r.get("record"), str(r["expr"])) for g in rules["groups"] for r in g["rules"]]


GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "${__rate_interval}": "1m"}


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's built-in variables so that Prometheus can evaluate the expression."""
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    return expr


# --------------------------------------------------------------------------- processes and HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
            time.sleep(interval)
            continue
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def scrape_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples named `name` (matching `labels`) in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total


class Proc:
    """A child process with its output in a file; stop() sends SIGTERM then SIGKILL (its own pid only)."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.argv = argv
        self.log_path = log
        self._log = open(log, "wb")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                      cwd=cwd, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def streamer_argv(argv: list[str]) -> list[str]:
    """A compose `streamer ...` command run with this checkout's interpreter."""
    assert argv[0] == "streamer"
    return [sys.executable, "-m", "streamer", *argv[1:]]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without STREAMER_* (so only what a service sets applies)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- Prometheus server

def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def promtool_binary() -> str | None:
    return shutil.which("promtool")


class PrometheusServer:
    """The Debian package's Prometheus on 127.0.0.1, with a temp config and storage; stop() ends it."""

    def __init__(self, config: dict, workdir: Path, rule_files: dict[str, str] | None = None,
                 port: int | None = None):
        self.port = port or free_port()
        self.dir = workdir
        for name, text in (rule_files or {}).items():
            (workdir / name).write_text(text)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc = Proc([prometheus_binary(), f"--config.file={workdir / 'prometheus.yml'}",
                          f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                          "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                         workdir / "prometheus.log", cwd=workdir)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready():
            if not self.proc.alive():
                raise AssertionError(f"prometheus exited: {self.proc.output()[-2000:]}")
            return http_get(self.url + "/-/ready", timeout=2)[0] == 200
        wait_for(ready, timeout, what="prometheus /-/ready")

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url, timeout=10)
        data = json.loads(body)
        if data.get("status") != "success":
            raise ValueError(f"prometheus {path} {params}: {data.get('errorType')}: {data.get('error')}")
        return data["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def stop(self) -> int:
        return self.proc.stop()

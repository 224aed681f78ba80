"""A private secured broker for the security tests: `KAFKA_SECURITY=sasl_ssl deploy/kafka-local/kafka.sh up`
on free ports in a temporary directory (TLS, SCRAM-SHA-512, ACLs enforced), and the clients that talk to it.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO / "deploy" / "kafka-local" / "kafka.sh"
MECHANISM = "SCRAM-SHA-512"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_run_kafka_sh() -> str | None:
    """Why kafka.sh cannot start a broker here, or None."""
    have_jars = any((KAFKA_SH.parent / "lib").glob("kafka_2.13-*.jar"))
    if not shutil.which("java") or not (have_jars or shutil.which("mvn")):
        return "kafka.sh needs java, and mvn unless deploy/kafka-local/lib is fetched"
    if not shutil.which("openssl"):
        return "KAFKA_SECURITY=sasl_ssl needs openssl"
    return None


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


@dataclass
class SecureBroker:
    """A running secured broker: its address, CA file, users and the settings each user connects with."""

    state: Path
    port: int
    controller_port: int
    users: dict[str, str] = field(default_factory=dict)  # user name -> password

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_dir(self) -> Path:
        return self.state / "secure"

    @property
    def ca(self) -> str:
        return str(self.secure_dir / "ca.pem")

    def sh(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        env = {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_CONTROLLER_PORT": str(self.controller_port),
               "KAFKA_LOCAL_DIR": str(self.state), "KAFKA_SECURITY": "sasl_ssl"}
        for name in ("STREAMER_INPUT_TOPIC", "STREAMER_OUTPUT_TOPIC", "STREAMER_DLQ_TOPIC", "STREAMER_GROUP_ID",
                     "STREAMER_CHANGELOG_TOPIC"):
            env.pop(name, None)  # the broker's ACLs are for serve's defaults
        return subprocess.run(["bash", str(KAFKA_SH), *args], env=env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> "SecureBroker":
        up = self.sh("up")
        if up.returncode != 0:
            raise AssertionError(f"the secured broker did not start:\n{up.stderr[-3000:]}")
        users = read_env_file(self.secure_dir / "users.env")
        for prefix in ("ADMIN", "STREAMER", "PRODUCER"):
            self.users[users[f"{prefix}_SASL_USERNAME"]] = users[f"{prefix}_SASL_PASSWORD"]
        return self

    def stop(self) -> None:
        self.sh("down", timeout=120)

    # ------------------------------------------------------------------ clients

    def flags(self, user: str) -> list[str]:
        """CLI flags for `user` (the password goes in the environment: see env())."""
        return ["--bootstrap-servers", self.bootstrap, "--security-protocol", "SASL_SSL", "--sasl-mechanism",
                MECHANISM, "--ssl-cafile", self.ca, "--sasl-username", user]

    def env(self, user: str, password: str | None = None) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
        return {**clean, "STREAMER_SASL_PASSWORD": self.users[user] if password is None else password,
                "PYTHONUNBUFFERED": "1"}

    def kafka_python(self, user: str, **kw) -> dict:
        """kafka-python keyword arguments for `user`."""
        return {"bootstrap_servers": self.bootstrap, "security_protocol": "SASL_SSL", "ssl_cafile": self.ca,
                "sasl_mechanism": MECHANISM, "sasl_plain_username": user, "sasl_plain_password": self.users[user],
                **kw}

    def confluent(self, user: str, password: str | None = None, **kw) -> dict:
        """confluent-kafka (librdkafka) configuration for `user`."""
        return {"bootstrap.servers": self.bootstrap, "security.protocol": "SASL_SSL", "ssl.ca.location": self.ca,
                "sasl.mechanism": MECHANISM, "sasl.username": user,
                "sasl.password": self.users[user] if password is None else password, **kw}

    def admin(self):
        from kafka import KafkaAdminClient

        return KafkaAdminClient(**self.kafka_python("admin", client_id="tests-secure-admin"))

    def connection(self, user: str, password: str | None = None, bootstrap: str | None = None, **kw):
        """The streamer.kafka.config.Connection of `user` (what the CLI would build)."""
        from streamer.kafka.config import Connection

        settings = {"security_protocol": "SASL_SSL", "ssl_cafile": self.ca, "sasl_mechanism": MECHANISM,
                    "sasl_username": user, "sasl_password": self.users[user] if password is None else password,
                    **kw}
        return Connection(bootstrap or self.bootstrap, **settings).validate()

    def streamer(self, *args: str, user: str, password: str | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        """`python -m streamer ARGS` as `user` (flags for the connection, password in the environment)."""
        return subprocess.run([sys.executable, "-m", "streamer", *args, *self.flags(user)], cwd=REPO,
                              env=self.env(user, password), capture_output=True, text=True, timeout=timeout)

    def grant(self, principal: str, needs) -> None:
        """Create the ACLs of `needs` (streamer.kafka.acls) for `principal` as the admin."""
        from streamer.kafka.acls import kafka_python_acls

        admin = self.admin()
        try:
            result = admin.create_acls(kafka_python_acls(principal, needs))
            assert not result["failed"], result["failed"]
        finally:
            admin.close()


def start_secure_broker(tmp_dir: Path) -> SecureBroker:
    controller = free_port()
    port = free_port()
    while port == controller:
        port = free_port()
    return SecureBroker(tmp_dir, port, controller).start()

"""Shared pytest fixtures. Keep this small and generic; never import TensorFlow here."""

from __future__ import annotations

import pytest

from tests import kafka_support


def pytest_collection_modifyitems(config, items):
    """Kafka-marked tests need a broker: skip them with a reason when none is configured."""
    if kafka_support.bootstrap_servers():
        return
    skip = pytest.mark.skip(reason=kafka_support.SKIP_REASON)
    for item in items:
        if "kafka" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request) -> str:
    """Each Kafka serving test runs with both clients (`streamer serve --kafka-client`); ids kafka-python
    and confluent (the latter skipped when confluent-kafka is not installed)."""
    if request.param == "confluent":
        pytest.importorskip("confluent_kafka", reason="confluent-kafka not installed (pip install -e '.[confluent]')")
    return request.param


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """KAFKA_BOOTSTRAP_SERVERS (``make test`` sets it after starting the local broker)."""
    servers = kafka_support.bootstrap_servers()
    if not servers:
        pytest.skip(kafka_support.SKIP_REASON)
    return servers


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap):
    """A session-wide kafka-python KafkaAdminClient."""
    admin = kafka_support.make_admin(kafka_bootstrap)
    yield admin
    admin.close()


@pytest.fixture
def unique_topic(kafka_admin):
    """Factory: ``unique_topic(prefix="t", partitions=1, configs=None) -> name`` creates a fresh
    topic (replication factor 1, ready to use); all of them are deleted after the test."""
    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 1, configs: dict | None = None) -> str:
        name = kafka_support.create_topic(kafka_admin, kafka_support.unique_name(prefix),
                                          partitions=partitions, configs=configs)
        created.append(name)
        return name

    yield make
    kafka_support.delete_topics(kafka_admin, created)

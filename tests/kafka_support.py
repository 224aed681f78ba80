"""Helpers for tests that talk to the real Kafka broker (kafka-python 3.x).

The broker is the local one from ``deploy/kafka-local/kafka.sh`` (``make test`` starts it and
sets KAFKA_BOOTSTRAP_SERVERS) or any broker named by KAFKA_BOOTSTRAP_SERVERS.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import time
import uuid

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
SKIP_REASON = "needs a Kafka broker: set KAFKA_BOOTSTRAP_SERVERS or run make test"


def bootstrap_servers() -> str | None:
    """The broker address from KAFKA_BOOTSTRAP_SERVERS, or None when unset/blank."""
    value = os.environ.get(BOOTSTRAP_ENV, "").strip()
    return value or None


def unique_name(prefix: str = "test") -> str:
    """A topic / group / transactional id that no other test run uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_admin(bootstrap: str, client_id: str = "tests-admin"):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id,
                            request_timeout_ms=30000)


def create_topic(admin, name: str, partitions: int = 1, configs: dict | None = None) -> str:
    """Create ``name`` (replication factor 1) and wait until every partition has a leader."""
    admin.create_topics(
        {name: {"num_partitions": partitions, "replication_factor": 1,
                "configs": {k: str(v) for k, v in (configs or {}).items()}}},
        timeout_ms=30000,
        wait_for_metadata=True,
    )
    return name


def delete_topics(admin, names) -> None:
    """Best-effort delete (teardown): a missing topic is not an error."""
    names = list(names)
    if names:
        admin.delete_topics(names, timeout_ms=30000, raise_errors=False)


def poll_records(consumer, count: int, timeout_s: float = 30.0) -> list:
    """Poll until ``count`` records have arrived (or the timeout); returns them in arrival order."""
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records


def read_to_end(consumer, partitions, timeout_s: float = 30.0) -> list:
    """Read the assigned ``partitions`` from their current position to the end offsets
    (the last stable offset for read_committed consumers); returns the records."""
    end = consumer.end_offsets(list(partitions))
    records: list = []
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < end[tp] for tp in partitions):
        if time.monotonic() > deadline:
            raise TimeoutError(f"did not reach end offsets {end} within {timeout_s}s")
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records

"""The confluent-kafka (librdkafka) changelog reader and admin client (``--kafka-client confluent``).

- `ConfluentReader`: a consumer without a group subscription that reads changelog partitions from the
  beginning until librdkafka reports their end (``enable.partition.eof``; read_committed: the last
  stable offset).
- `ConfluentAdmin`: DescribeTopics (partition counts, the principal's operations), CreateTopics,
  CreatePartitions, DescribeConfigs; the futures are waited for while the client's error events are
  served, so that a wrong password or TLS setting is said at once (`streamer.kafka.rdkafka._Events`).
"""

from __future__ import annotations

import concurrent.futures
import time

import confluent_kafka as ck
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamer.kafka.client import ClientTimeout, TopicSpec
from streamer.kafka.rdkafka import DOWN_AFTER_S, _Events, translate


# watermark errors of a partition that exists but is not served yet (just created): retried until the deadline
_NOT_READY_YET = frozenset((KafkaError._UNKNOWN_PARTITION, KafkaError.NOT_LEADER_FOR_PARTITION,
                            KafkaError.LEADER_NOT_AVAILABLE))


class ConfluentReader:
    def __init__(self, config: dict, events: _Events | None = None):
        self._events = events or _Events()
        try:
            self.raw = ck.Consumer({**config, **self._events.config(stats=False)})
        except (KafkaException, ValueError) as exc:
            raise translate(exc, "connect", "creating the changelog reader: ") from exc

    def read(self, topic: str, partitions: list[int], timeout_s: float, sink) -> None:
        if not partitions:
            return
        raw = self.raw
        deadline = time.monotonic() + timeout_s
        try:
            remaining = {p for p in partitions if self._has_records(topic, p, deadline)}
            if not remaining:
                return
            raw.assign([TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in sorted(remaining)])
            try:
                while remaining:
                    if time.monotonic() > deadline:
                        raise ClientTimeout(f"changelog {topic} partitions {sorted(remaining)} not read to their end "
                                            f"within {timeout_s:.0f}s", kind="restore")
                    self._events.raise_fatal()
                    msgs = raw.consume(20000, 0)  # what is fetched already; else wait for the next fetch
                    if not msgs:
                        first = raw.poll(0.1)
                        msgs = [] if first is None else [first]
                    self._read_batch(msgs, remaining, sink)
            finally:
                raw.unassign()
        except KafkaException as exc:
            raise translate(exc, "restore") from exc

    def _has_records(self, topic: str, partition: int, deadline: float) -> bool:
        tp = TopicPartition(topic, partition)
        while True:
            try:
                low, high = self.raw.get_watermark_offsets(tp, timeout=max(1.0, deadline - time.monotonic()))
                return high > low
            except KafkaException as exc:
                if not exc.args or exc.args[0].code() not in _NOT_READY_YET or time.monotonic() > deadline:
                    raise
            # a partition added moments ago (the changelog grew with the input): unknown to this client's
            # metadata, or its leader not yet elected; a metadata request for the topic, and ask again
            time.sleep(0.05)
            self.raw.list_topics(topic, timeout=max(1.0, deadline - time.monotonic()))

    @staticmethod
    def _read_batch(msgs: list, remaining: set[int], sink) -> None:
        by_partition: dict[int, tuple[list, list]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(m.partition())
                    continue
                raise translate(err, "restore")
            keys, values = by_partition.setdefault(m.partition(), ([], []))
            keys.append(m.key())
            values.append(m.value())
        for p, (keys, values) in by_partition.items():
            sink(p, keys, values)

    def close(self) -> None:
        self.raw.close()


class ConfluentAdmin:
    def __init__(self, config: dict, timeout_s: float, events: _Events | None = None):
        from confluent_kafka.admin import AdminClient

        self._events = events or _Events()
        self._timeout_s = timeout_s
        self._servers = config.get("bootstrap.servers")
        try:
            self.raw = AdminClient({**config, **self._events.config(stats=False)})
        except (KafkaException, ValueError) as exc:
            raise translate(exc, "connect", "creating the admin client: ") from exc

    def _metadata(self, timeout_s: float | None = None):
        try:
            return self.raw.list_topics(timeout=timeout_s or min(self._timeout_s, 5.0))
        except KafkaException as exc:
            self.raw.poll(0)  # serves the error events (a wrong password...) that say why
            self._events.raise_fatal()
            raise translate(exc, "connect", "reading the cluster metadata: ") from exc

    def _results(self, futures: dict) -> dict:
        """Wait for an admin request's futures, serving the client's error events meanwhile: an error that
        retrying cannot fix (`_Events`) is raised at once, and brokers that stay down for DOWN_AFTER_S are a
        ClientTimeout (retried by the caller), not a wait for the whole request timeout."""
        self._events.down = False
        start = time.monotonic()
        pending = list(futures.values())
        while not all(f.done() for f in pending):
            # the futures are resolved on librdkafka's background thread: wake as soon as they are (a poll(0.1)
            # would wait its whole timeout: ~0.1 s per request, five of them at start-up), and serve the error
            # events at least every 0.1 s
            concurrent.futures.wait(pending, timeout=0.1)
            self.raw.poll(0)
            self._events.raise_fatal()
            if self._events.down and time.monotonic() - start > DOWN_AFTER_S:
                raise ClientTimeout(f"no broker reachable at {self._servers} for {DOWN_AFTER_S:.0f}s", kind="connect")
        return futures

    def partition_counts(self, names: list[str]) -> dict[str, int | None]:
        """None for a topic that does not exist; one the client may not Describe raises (Kafka then does not say
        whether it exists)."""
        described = self.topic_access(names)
        refused = [d for d in described if d["error_code"] == KafkaError.TOPIC_AUTHORIZATION_FAILED]
        if refused:
            raise translate(refused[0]["error"], "connect", f"describing topic {refused[0]['name']}: ",
                            topic=refused[0]["name"])
        return {d["name"]: d["partitions"] for d in described}

    def topic_access(self, names: list[str]) -> list[dict]:
        """[{"name", "error_code", "authorized_operations": ["READ", ...] or None, "partitions", "error"}]
        (DescribeTopics: a metadata request that never creates a topic)."""
        try:
            futures = self._results(self.raw.describe_topics(ck.TopicCollection(list(names)),
                                                             request_timeout=self._timeout_s,
                                                             include_authorized_operations=True))
        except KafkaException as exc:
            raise translate(exc, "connect", "describing topics: ") from exc
        out = []
        for name, future in futures.items():
            entry = {"name": name, "error_code": 0, "authorized_operations": None, "partitions": None, "error": None}
            try:
                d = future.result()
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is None or err.code() not in (KafkaError.UNKNOWN_TOPIC_OR_PART,
                                                     KafkaError.TOPIC_AUTHORIZATION_FAILED):
                    self._events.raise_fatal()
                    raise translate(exc, "connect", f"describing topic {name}: ") from exc
                entry.update(error_code=err.code(), error=err)
            else:
                ops = d.authorized_operations
                entry.update(partitions=len(d.partitions), authorized_operations=None if ops is None else
                             [op.name for op in ops])
            out.append(entry)
        return out

    def create_partitions(self, topic: str, count: int) -> None:
        from confluent_kafka.admin import NewPartitions

        future = self._results(self.raw.create_partitions([NewPartitions(topic, count)], operation_timeout=30,
                                                          request_timeout=self._timeout_s))[topic]
        try:
            future.result()
        except KafkaException as exc:
            if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() == KafkaError.INVALID_PARTITIONS:
                return  # it has them already (another instance added them first)
            raise translate(exc, "connect", f"adding partitions to {topic}: ") from exc

    def create_topics(self, specs: dict[str, TopicSpec]) -> None:
        from confluent_kafka.admin import NewTopic

        new = [NewTopic(name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                        config={k: str(v) for k, v in s.configs.items()}) for name, s in specs.items()]
        futures = self._results(self.raw.create_topics(new, operation_timeout=30, request_timeout=self._timeout_s))
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args and isinstance(exc.args[0], KafkaError) and \
                        exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # another instance created it at the same moment
                raise translate(exc, "connect", f"creating topic {name}: ") from exc
        self._wait_for_leaders(list(specs), deadline=time.monotonic() + 30)

    def _wait_for_leaders(self, names: list[str], deadline: float) -> None:
        while True:
            topics = self._metadata().topics
            if all(n in topics and topics[n].error is None and topics[n].partitions and
                   all(p.leader >= 0 for p in topics[n].partitions.values()) for n in names):
                return
            if time.monotonic() > deadline:
                raise ClientTimeout(f"created topics {', '.join(names)} have no leaders after 30 s")
            time.sleep(0.1)

    def topic_config(self, topic: str, name: str) -> str | None:
        from confluent_kafka.admin import ConfigResource, ResourceType

        resource = ConfigResource(ResourceType.TOPIC, topic)
        try:
            futures = self._results(self.raw.describe_configs([resource], request_timeout=self._timeout_s))
            entries = futures[resource].result()
        except KafkaException as exc:
            raise translate(exc, "connect", f"describing topic {topic}: ") from exc
        entry = entries.get(name)
        return None if entry is None else entry.value

    def close(self) -> None:
        """Nothing to close: the admin client is released with its last reference."""

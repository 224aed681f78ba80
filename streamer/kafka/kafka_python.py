"""The kafka-python implementation of `streamer.kafka.client` (``--kafka-client kafka-python``, the default).

- `KafkaPythonClients`: the factory (consumer, producer, reader, admin) from a `Connection` and a
  `ClientTuning`; `consumer_kwargs`/`producer_kwargs`/`reader_kwargs`/`admin_kwargs` are the settings.
- `KafkaPythonConsumer`: the group member. Rebalance callbacks run on kafka-python's IO thread while the
  main thread waits in ``poll``; the revocation's offset commit is ``commit_async`` awaited on the IO
  loop (an async listener: a blocking consumer call is not allowed there). The default assignors are
  eager: every rebalance revokes everything and assigns the whole new set.
- `KafkaPythonProducer`: futures with ``add_both``; sending costs ~60 us of Python per record, so a
  checkpoint's changelog records are sent from a thread (``background_sends``).
- `KafkaPythonReader`, `KafkaPythonAdmin`.

kafka-python 3.0.12 needs work-arounds, kept here: the lost-rejoin patch (`compat`, plus the service's
group watch through ``group_stable()``), a non-idempotent at-least-once producer (its idempotent one can
stall for good after a broker restart), and the `crc32c` C extension for checksums (`fast_crc32c`).
"""

from __future__ import annotations

import logging
import time

from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import (AuthorizationError, FencedInstanceIdError, InvalidPartitionsError, KafkaConfigurationError,
                          KafkaError, KafkaTimeoutError, SaslAuthenticationFailedError, TopicAlreadyExistsError,
                          TopicAuthorizationFailedError, UnsupportedVersionError)
from kafka.structs import MemberState, OffsetAndMetadata, TopicPartition

from streamer.kafka import membership
from streamer.kafka.client import Batch, ClientError, Clients, ClientTimeout, FatalClientError, Fenced, TopicSpec

log = logging.getLogger("streamer.serve")

# Errors that retrying cannot fix.
FATAL = (AuthorizationError, SaslAuthenticationFailedError, UnsupportedVersionError, KafkaConfigurationError)


def fast_crc32c() -> bool:
    """Whether kafka-python found the `crc32c` C extension (else it checks CRCs in pure Python, ~4 MB/s)."""
    try:
        from kafka.record import util
    except ImportError:
        return False
    return getattr(util, "crc32c_c", None) is not None


def translate(exc: BaseException, kind: str) -> ClientError:
    """A kafka-python exception as a `ClientError` counted under `kind`."""
    name = type(exc).__name__
    text = str(exc)
    message = text if text.startswith(name) else f"{name}: {text}"  # kafka-python's own text may name it
    if isinstance(exc, FencedInstanceIdError):
        return Fenced(message, kind=kind, name=name, cause=exc)
    if isinstance(exc, FATAL):
        return FatalClientError(message, kind=kind, name=name, cause=exc)
    if isinstance(exc, KafkaTimeoutError):
        return ClientTimeout(message, kind=kind, name=name, cause=exc)
    return ClientError(message, kind=kind, name=name, cause=exc)


# --------------------------------------------------------------------------- settings


def consumer_kwargs(conn, t) -> dict:
    """The group consumer of the input topic: manual commits, read_committed under exactly-once."""
    kw = {**conn.client_kwargs(), "group_id": t.group_id, "enable_auto_commit": False,
          "auto_offset_reset": t.auto_offset_reset, "max_poll_records": t.max_poll_records,
          "session_timeout_ms": t.session_timeout_ms, "heartbeat_interval_ms": t.heartbeat_interval_ms,
          "max_poll_interval_ms": t.max_poll_interval_ms, "request_timeout_ms": t.request_timeout_ms,
          "isolation_level": "read_committed" if t.exactly_once else "read_uncommitted",
          "max_partition_fetch_bytes": 4 << 20, "allow_auto_create_topics": False, "check_crcs": fast_crc32c(),
          "metadata_max_age_ms": t.metadata_max_age_ms}
    if t.group_instance_id:
        kw["group_instance_id"] = t.group_instance_id
    return kw


def reader_kwargs(conn, t) -> dict:
    """The changelog reader: no group, manual assignment, read_committed, big fetches."""
    return {**conn.client_kwargs(), "client_id": conn.client_id + "-restore", "group_id": None,
            "enable_auto_commit": False, "isolation_level": "read_committed", "max_poll_records": 20000,
            "max_partition_fetch_bytes": 16 << 20, "fetch_max_bytes": 64 << 20,
            "request_timeout_ms": t.request_timeout_ms, "allow_auto_create_topics": False,
            "check_crcs": fast_crc32c()}


def producer_kwargs(conn, t) -> dict:
    """The producer of predictions, dead letters and changelog records (acks=all).

    Exactly-once: transactional (hence idempotent). At-least-once: not idempotent: kafka-python
    3.0.12's idempotent producer can stop for good after a broker restart (it loses its producer-id
    request and then neither sends nor expires its batches). Without it a retried batch can be
    duplicated or overtaken by a later one: harmless for predictions (at-least-once; each carries its
    step) and for the changelog, which writes a stream at most once per checkpoint and starts the
    next checkpoint only when the previous one is acknowledged."""
    request_timeout = max(1000, min(t.request_timeout_ms, t.delivery_timeout_ms - t.linger_ms - 1000))
    kw = {**conn.client_kwargs(), "acks": "all", "enable_idempotence": t.exactly_once,
          "max_in_flight_requests_per_connection": 5, "linger_ms": t.linger_ms,
          "batch_size": t.batch_bytes, "request_timeout_ms": request_timeout,
          "delivery_timeout_ms": max(t.delivery_timeout_ms, request_timeout + t.linger_ms),
          "compression_type": None if t.compression == "none" else t.compression,
          "max_request_size": t.max_request_size, "allow_auto_create_topics": False,
          "metadata_max_age_ms": t.metadata_max_age_ms}
    if t.exactly_once:
        kw.update(transactional_id=t.transactional_id, transaction_timeout_ms=t.transaction_timeout_ms)
    return kw


def admin_kwargs(conn, t) -> dict:
    return {**conn.client_kwargs(), "client_id": conn.client_id + "-admin", "request_timeout_ms": t.request_timeout_ms}


# --------------------------------------------------------------------------- factory


class KafkaPythonClients(Clients):
    name = "kafka-python"

    def consumer(self) -> "KafkaPythonConsumer":
        return KafkaPythonConsumer(consumer_kwargs(self.connection, self.tuning), self.topic,
                                   self.tuning.auto_offset_reset)

    def producer(self) -> "KafkaPythonProducer":
        return KafkaPythonProducer(producer_kwargs(self.connection, self.tuning), self.tuning.exactly_once)

    def reader(self) -> "KafkaPythonReader":
        return KafkaPythonReader(reader_kwargs(self.connection, self.tuning))

    def admin(self) -> "KafkaPythonAdmin":
        from kafka import KafkaAdminClient

        try:
            return KafkaPythonAdmin(KafkaAdminClient(**admin_kwargs(self.connection, self.tuning)))
        except KafkaError as exc:
            raise translate(exc, "connect") from exc


# --------------------------------------------------------------------------- consumer


class _Listener(AsyncConsumerRebalanceListener):
    """Delegates to the service; async so the revoke can await the offset commit on the IO loop."""

    def __init__(self, consumer: "KafkaPythonConsumer", listener):
        self._consumer = consumer
        self._listener = listener

    async def on_partitions_revoked(self, revoked):
        offsets = self._listener.revoke_checkpoint(self._consumer.partitions_of(revoked))
        if offsets is None:
            return
        ok = False
        if offsets:
            try:
                await self._consumer.raw.commit_async(self._consumer.kafka_offsets(offsets))
                ok = True
            except Exception as exc:  # noqa: BLE001 - any failure: the events are replayed and deduplicated
                log.warning("offset commit on revocation failed (%s: %s)", type(exc).__name__, exc)
        self._listener.revoke_done(offsets, ok)

    async def on_partitions_assigned(self, assigned):
        self._listener.assigned(self._consumer.partitions_of(assigned))

    async def on_partitions_lost(self, lost):
        self._listener.lost(self._consumer.partitions_of(lost))


class KafkaPythonConsumer:
    def __init__(self, kwargs: dict, topic: str, auto_offset_reset: str = "earliest"):
        from kafka import KafkaConsumer

        from streamer.kafka import compat

        compat.apply()  # kafka-python 3.0.x can lose a group join that spans two polls
        self.topic = topic
        self._reset = auto_offset_reset
        self._tps: dict[int, TopicPartition] = {}
        try:
            self.raw = KafkaConsumer(**kwargs)
        except KafkaError as exc:
            raise translate(exc, "connect") from exc

    def _tp(self, p: int) -> TopicPartition:
        tp = self._tps.get(p)
        if tp is None:
            tp = self._tps[p] = TopicPartition(self.topic, p)
        return tp

    def partitions_of(self, tps) -> set[int]:
        return {tp.partition for tp in tps if tp.topic == self.topic}

    def kafka_offsets(self, offsets: dict[int, int]) -> dict:
        return {self._tp(p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}

    def subscribe(self, listener) -> None:
        # Know the topic's partitions before the first join: a leader that assigns without them rejoins at
        # once when they arrive, and kafka-python 3.0.12 can lose such a metadata-triggered rejoin when it
        # spans several poll() calls (the member stays "rebalancing" with heartbeats off; see group_stable).
        try:
            self.raw.partitions_for_topic(self.topic)
            self.raw.subscribe([self.topic], listener=_Listener(self, listener))
        except KafkaError as exc:
            raise translate(exc, "connect") from exc

    def consume(self, max_records: int, timeout_s: float) -> Batch | None:
        try:
            records = self.raw.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise translate(exc, "poll") from exc
        if not records:
            return None
        b = Batch()
        for tp, recs in records.items():
            if tp.topic != self.topic:
                continue
            b.partitions.extend([tp.partition] * len(recs))
            b.offsets.extend([r.offset for r in recs])
            b.keys.extend([r.key for r in recs])
            b.values.extend([r.value for r in recs])
        return b

    def commit(self, offsets: dict[int, int], timeout_s: float) -> None:
        try:
            self.raw.commit(self.kafka_offsets(offsets), timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise translate(exc, "commit") from exc

    def rewind(self, partitions: list[int]) -> None:
        try:
            for p in partitions:
                tp = self._tp(p)
                committed = self.raw.committed(tp)
                if committed is not None:
                    self.raw.seek(tp, committed)
                elif self._reset == "latest":
                    self.raw.seek_to_end(tp)
                else:
                    self.raw.seek_to_beginning(tp)
        except KafkaError as exc:
            raise translate(exc, "poll") from exc

    def seek(self, partition: int, offset: int) -> None:
        self.raw.seek(self._tp(partition), offset)

    def pause(self, partitions) -> None:
        if partitions:
            self.raw.pause(*[self._tp(p) for p in partitions])

    def resume(self, partitions) -> None:
        if partitions:
            self.raw.resume(*[self._tp(p) for p in partitions])

    def highwater(self, partition: int) -> int | None:
        return self.raw.highwater(self._tp(partition))

    def group_metadata(self):
        return self.raw.group_metadata()

    def connections(self) -> int | None:
        return self.raw.metrics().get("consumer-metrics", {}).get("connection-count")

    def group_stable(self) -> bool | None:
        return self.raw.group_metadata().state == MemberState.STABLE

    def partition_count(self) -> int | None:
        return len(self.raw.partitions_for_topic(self.topic) or ()) or None

    def close(self, leave: bool = False) -> None:
        """`leave`: a static member sends LeaveGroup too (kafka-python skips it for static members)."""
        if leave:
            membership.leave_on_close(self.raw)
        try:
            self.raw.close()
        except KafkaError as exc:
            raise translate(exc, "poll") from exc


# --------------------------------------------------------------------------- producer


def _resolver(on_done):
    """kafka-python's future callback (RecordMetadata or an exception) -> on_done(error or None)."""
    def done(result, on_done=on_done):
        on_done(result if isinstance(result, BaseException) else None)
    return done


class KafkaPythonProducer:
    background_sends = True  # ~60 us of Python per record: a checkpoint's changelog goes through a thread

    def __init__(self, kwargs: dict, transactional: bool):
        from kafka import KafkaProducer

        try:
            self.raw = KafkaProducer(**kwargs)
        except KafkaError as exc:
            raise translate(exc, "connect") from exc
        if transactional:
            try:
                self.raw.init_transactions()  # fences an older producer with our id, aborts its open transaction
            except BaseException as exc:
                self.raw.close(timeout=0)
                if isinstance(exc, KafkaError):
                    raise translate(exc, "transaction") from exc
                raise

    def send(self, topic, key, value, partition, on_done) -> None:
        try:
            self.raw.send(topic, value=value, key=key, partition=partition).add_both(_resolver(on_done))
        except KafkaError as exc:
            raise translate(exc, "produce") from exc

    def send_many(self, topic, keys, values, partitions, on_done) -> None:
        send = self.raw.send
        done = _resolver(on_done)
        try:
            if partitions is None:
                for key, value in zip(keys, values):
                    send(topic, value=value, key=key).add_both(done)
            else:
                for key, value, partition in zip(keys, values, partitions):
                    send(topic, value=value, key=key, partition=partition).add_both(done)
        except KafkaError as exc:
            raise translate(exc, "produce") from exc

    def poll(self) -> None:
        """Deliveries resolve on kafka-python's sender thread: nothing to serve here."""

    def flush(self, timeout_s: float | None) -> bool:
        try:
            self.raw.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            return False
        return True

    def begin_transaction(self) -> None:
        self._txn(self.raw.begin_transaction)

    def send_offsets_to_transaction(self, topic: str, offsets: dict[int, int], group_metadata) -> None:
        kafka_offsets = {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        self._txn(self.raw.send_offsets_to_transaction, kafka_offsets, group_metadata)

    def commit_transaction(self) -> None:
        self._txn(self.raw.commit_transaction)

    def abort_transaction(self) -> None:
        self._txn(self.raw.abort_transaction)

    @staticmethod
    def _txn(fn, *args):
        try:
            return fn(*args)
        except KafkaError as exc:
            raise translate(exc, "transaction") from exc

    def partition_count(self, topic: str) -> int:
        try:
            return len(self.raw.partitions_for(topic) or ())
        except KafkaError as exc:
            raise translate(exc, "produce") from exc

    def close(self, timeout_s: float) -> None:
        self.raw.close(timeout=timeout_s)


# --------------------------------------------------------------------------- reader and admin


class KafkaPythonReader:
    """A group-less consumer that reads changelog partitions to their end."""

    def __init__(self, kwargs: dict):
        from kafka import KafkaConsumer

        try:
            self.raw = KafkaConsumer(**kwargs)
        except KafkaError as exc:
            raise translate(exc, "connect") from exc

    def read(self, topic: str, partitions: list[int], timeout_s: float, sink) -> None:
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return
        reader = self.raw
        try:
            reader.assign(tps)
            try:
                reader.seek_to_beginning(*tps)
                deadline = time.monotonic() + timeout_s
                end = self._end_offsets(tps, deadline)
                remaining = {tp for tp in tps if reader.position(tp) < end[tp]}
                while remaining:
                    if time.monotonic() > deadline:
                        raise ClientTimeout(f"changelog {topic} partitions {sorted(tp.partition for tp in remaining)} "
                                            f"not read to their end offsets within {timeout_s:.0f}s", kind="restore")
                    for tp, records in reader.poll(timeout_ms=200).items():
                        stop = end[tp]
                        kept = [r for r in records if r.offset < stop]
                        sink(tp.partition, [r.key for r in kept], [r.value for r in kept])
                    for tp in list(remaining):
                        if reader.position(tp) >= end[tp]:
                            remaining.discard(tp)
            finally:
                reader.assign([])
        except KafkaError as exc:
            raise translate(exc, "restore") from exc

    def _end_offsets(self, tps: list, deadline: float) -> dict:
        """The partitions' end offsets. kafka-python raises KeyError for a partition added since its last
        metadata refresh (the changelog grew with the input a moment ago): refresh and ask again."""
        while True:
            try:
                return self.raw.end_offsets(tps)
            except KeyError as exc:
                if time.monotonic() > deadline:
                    raise ClientTimeout(f"changelog partition {exc} unknown to the client's metadata",
                                        kind="restore") from None
            time.sleep(0.05)
            refresh = getattr(self.raw, "_fetch_all_topic_metadata", None)  # KafkaConsumer's own, 2.x and 3.x
            if refresh is not None:
                refresh()

    def close(self) -> None:
        self.raw.close()


class KafkaPythonAdmin:
    """`Admin` over a kafka-python KafkaAdminClient (which it closes)."""

    def __init__(self, raw):
        self.raw = raw

    def partition_counts(self, names: list[str]) -> dict[str, int | None]:
        """A topic the client may not Describe raises (Kafka then does not say whether it exists)."""
        found: dict[str, int | None] = {}
        described = self.topic_access(names)
        refused = sorted(t["name"] for t in described if t.get("error_code") == TopicAuthorizationFailedError.errno)
        if refused:
            exc = TopicAuthorizationFailedError(set(refused))
            raise translate(exc, "connect") from exc
        for t in described:
            found[t["name"]] = len(t["partitions"]) if t.get("error_code", 0) == 0 else None
        return {n: found.get(n) for n in names}

    def create_topics(self, specs: dict[str, TopicSpec]) -> None:
        spec = {name: {"num_partitions": s.partitions, "replication_factor": s.replication_factor,
                       "configs": dict(s.configs)} for name, s in specs.items()}
        try:
            self.raw.create_topics(spec, timeout_ms=30000, wait_for_metadata=True)
        except TopicAlreadyExistsError:
            pass  # another instance created them at the same moment
        except KafkaError as exc:
            raise translate(exc, "connect") from exc

    def create_partitions(self, topic: str, count: int) -> None:
        try:
            self.raw.create_partitions({topic: count}, timeout_ms=30000)
        except InvalidPartitionsError:
            pass  # it has them already (another instance added them first)
        except KafkaError as exc:
            raise translate(exc, "connect") from exc

    def topic_access(self, names: list[str]) -> list[dict]:
        """[{"name", "error_code", "authorized_operations": ["READ", ...] or None, "partitions"}]."""
        try:
            return self.raw.describe_topics(list(names))
        except KafkaError as exc:
            raise translate(exc, "connect") from exc

    def topic_config(self, topic: str, name: str) -> str | None:
        from kafka.admin import ConfigResource, ConfigResourceType

        try:
            described = self.raw.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)],
                                                  config_filter="all")
        except KafkaError as exc:
            raise translate(exc, "connect") from exc
        entry = described.get("topic", {}).get(topic, {}).get(name)
        return None if entry is None else entry.get("value")

    def close(self) -> None:
        self.raw.close()

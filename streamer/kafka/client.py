"""The Kafka client interface the serve loop runs on; one module per client implements it.

`streamer serve --kafka-client kafka-python|confluent` (STREAMER_KAFKA_CLIENT) picks the implementation:

- `streamer.kafka.kafka_python`: kafka-python (pure Python; the default the design names);
- `streamer.kafka.confluent`: confluent-kafka on librdkafka (the optional extra ``rnn-streamer[confluent]``).

Everything above this interface (`service`, `checkpoint`, `restore`, `topics`) is written once and
behaves the same whichever client is chosen. The interface is small and speaks plain Python:
partitions are ints of the one input topic (or of the named topic), offsets are ints (the next offset
to read), records are columns of a `Batch`, errors are `ClientError`.

`Clients` (one per serve process; `make_clients(name, connection, tuning)`) makes:

- `Consumer`: the group member on the input topic. ``subscribe(listener)`` (a `RebalanceListener`:
  the service), ``consume(max_records, timeout_s) -> Batch``, ``commit(offsets)``, ``rewind(partitions)``
  (to the committed offset, or by auto.offset.reset), ``seek``, ``pause``, ``resume``, ``highwater``,
  ``group_metadata()`` (for transactions), ``connections()`` and ``group_stable()`` (health),
  ``partition_count()`` (the input topic's, as the client's metadata has it now: added partitions show up
  within --metadata-max-age-ms), ``close(leave)`` (``leave``: a static member leaves the group too; see
  `streamer.kafka.membership`).
  The rebalance callbacks run on the client's own thread (kafka-python's IO thread, while the main
  thread waits in ``consume``) or on the calling thread inside ``consume``/``close`` (librdkafka); the
  service locks either way.
- `Producer`: ``send``/``send_many(topic, keys, values, partitions, on_done)`` where ``on_done(error)``
  is called once per record (error None when acknowledged) from ``poll()``/``flush()`` or the client's
  sender thread; ``flush(timeout_s) -> bool`` (everything resolved); the transaction calls;
  ``close(timeout_s)``; ``partition_count(topic)`` (as its metadata has it: a record for a partition it
  does not know yet is refused). ``background_sends``: whether sending many records costs enough Python
  time to hand it to a thread (kafka-python: yes; librdkafka: no).
- `Reader`: ``read(topic, partitions, timeout_s, sink)``: every record of the partitions up to their end
  at the start of the read (read_committed), as ``sink(partition, keys, values)`` batches.
- `Admin`: ``partition_counts(names)`` (a topic it may not Describe: `FatalClientError`), ``create_topics(specs)``,
  ``create_partitions(topic, count)``, ``topic_config(topic, name)``, ``topic_access(names)`` (the operations
  the principal may do on each topic, for `streamer.kafka.acls`), ``close()``.

`Clients.explain(exc)` turns an error that retrying cannot fix (a wrong password, a missing ACL, TLS) into
one line for the user, whichever client raised it (`streamer.kafka.failures`); the factory knows the
connection and what the role needs (`streamer.kafka.acls`) to say it.

Errors: an implementation raises `ClientError` (retried: the loop counts it under ``kind`` and rewinds)
or `FatalClientError` (retrying cannot fix it: authentication, authorisation, configuration, an
unsupported broker; serve stops with one line; `Fenced`: another process joined with this static
member's group.instance.id). ``name`` is the client's own name for the error (``SaslAuthenticationFailedError``,
``TOPIC_AUTHORIZATION_FAILED``...), ``cause`` the original exception (or librdkafka's error object), ``topic``
the topic it is about when the client says (a delivery report's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

CLIENT_NAMES = ("kafka-python", "confluent")
DEFAULT_CLIENT = "kafka-python"


class ClientError(Exception):
    """A Kafka operation failed; retrying (after a rewind) may succeed.

    `kind` is the `streamer_kafka_errors_total` kind it is counted under (see `streamer.kafka.metrics`)."""

    fatal = False

    def __init__(self, message: str, *, kind: str = "poll", name: str | None = None, cause: object = None,
                 topic: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.name = name or type(self).__name__
        self.cause = cause  # the client's exception, or its error object (confluent-kafka's KafkaError)
        self.topic = topic


class FatalClientError(ClientError):
    """Retrying cannot fix this (authentication, authorisation, configuration, broker version)."""

    fatal = True


class Fenced(FatalClientError):
    """Another process joined the group with this static member's group.instance.id (the broker fenced us)."""


class DeliveryError(ClientError):
    """A record sent since the last checkpoint was not delivered."""

    def __init__(self, message: str, **kw):
        kw.setdefault("kind", "produce")
        super().__init__(message, **kw)


class ClientTimeout(ClientError):
    """An operation did not finish in time (no broker, a flush that outlived its records' timeout...)."""

    def __init__(self, message: str, **kw):
        kw.setdefault("kind", "connect")
        super().__init__(message, **kw)


@dataclass
class Batch:
    """One consume: records of the input topic as columns, in arrival order (per partition: offset order)."""

    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass(frozen=True)
class TopicSpec:
    partitions: int
    replication_factor: int = -1
    configs: dict = field(default_factory=dict)


class RebalanceListener(Protocol):
    """What a `Consumer` calls on rebalances (the service implements it; see `streamer.kafka.service`)."""

    def revoke_checkpoint(self, partitions: set[int]) -> dict[int, int] | None:
        """Checkpoint before `partitions` go; returns offsets the consumer must commit now (or None)."""

    def revoke_done(self, offsets: dict[int, int], committed: bool) -> None:
        """After the consumer committed (or failed to commit) the offsets `revoke_checkpoint` returned."""

    def assigned(self, partitions: set[int]) -> None:
        """The whole assignment after a rebalance (eager: everything; cooperative: kept + added)."""

    def unassigned(self, partitions: set[int]) -> None:
        """Cooperative rebalancing: revoked `partitions` are gone for good (not handed back)."""

    def lost(self, partitions: set[int]) -> None:
        """Forced out of the group: `partitions` may be owned by someone else already."""


OnDone = Callable[[BaseException | None], None]


class Consumer(Protocol):
    topic: str

    def subscribe(self, listener: RebalanceListener) -> None: ...

    def consume(self, max_records: int, timeout_s: float) -> Batch | None: ...

    def commit(self, offsets: dict[int, int], timeout_s: float) -> None: ...

    def rewind(self, partitions: list[int]) -> None: ...

    def seek(self, partition: int, offset: int) -> None: ...

    def pause(self, partitions: list[int]) -> None: ...

    def resume(self, partitions: list[int]) -> None: ...

    def highwater(self, partition: int) -> int | None: ...

    def group_metadata(self): ...

    def connections(self) -> int | None: ...

    def group_stable(self) -> bool | None: ...

    def partition_count(self) -> int | None: ...

    def close(self, leave: bool = False) -> None: ...


class Producer(Protocol):
    background_sends: bool

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
             on_done: OnDone) -> None: ...

    def send_many(self, topic: str, keys: list, values: list, partitions: list | None, on_done: OnDone) -> None: ...

    def poll(self) -> None: ...

    def flush(self, timeout_s: float | None) -> bool: ...

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(self, topic: str, offsets: dict[int, int], group_metadata) -> None: ...

    def commit_transaction(self) -> None: ...

    def abort_transaction(self) -> None: ...

    def partition_count(self, topic: str) -> int: ...

    def close(self, timeout_s: float) -> None: ...


class Reader(Protocol):
    def read(self, topic: str, partitions: list[int], timeout_s: float,
             sink: Callable[[int, list, list], None]) -> None: ...

    def close(self) -> None: ...


class Admin(Protocol):
    def partition_counts(self, names: list[str]) -> dict[str, int | None]: ...

    def create_topics(self, specs: dict[str, TopicSpec]) -> None: ...

    def create_partitions(self, topic: str, count: int) -> None: ...

    def topic_config(self, topic: str, name: str) -> str | None: ...

    def topic_access(self, names: list[str]) -> list[dict]: ...

    def close(self) -> None: ...


class Clients:
    """What both factories share: the connection, the tuning, the role's needs, `explain`. Subclasses
    (`KafkaPythonClients`, `ConfluentClients`) make the clients: ``consumer()``, ``producer()``,
    ``reader()``, ``admin()``."""

    name = ""

    def __init__(self, connection, tuning, topic: str, metrics=None, needs=()):
        self.connection = connection
        self.tuning = tuning
        self.topic = topic
        self.metrics = metrics
        self.needs = tuple(needs)  # streamer.kafka.acls needs: what an authorization failure is about
        # Starting: a transport failure may be probed (`explain`); once serving, a broker that goes away is
        # waited out without connecting to it on the side (`serving()`).
        self.probing = True

    def serving(self) -> None:
        """The service is serving: failures from now on are not probed."""
        self.probing = False

    def explain(self, exc: BaseException, probe: bool = True) -> str | None:
        """One line if `exc` cannot be fixed by retrying (authentication, ACLs, TLS), else None. `probe`: may
        connect once to tell a wrong password or TLS setting from a broker that is down (not while serving)."""
        from streamer.kafka import failures

        return failures.explain(exc, self.connection, self.needs, probe=probe)

    def consumer(self) -> Consumer:
        raise NotImplementedError

    def producer(self) -> Producer:
        raise NotImplementedError

    def reader(self) -> Reader:
        raise NotImplementedError

    def admin(self) -> Admin:
        raise NotImplementedError


def make_clients(name: str, connection, tuning, topic: str, metrics=None, needs=()) -> Clients:
    """The client factory for `name` (one of CLIENT_NAMES), for a consumer of input `topic`; `metrics`
    (a `KafkaMetrics`) counts the errors a client reports by itself (librdkafka's error events); `needs`
    (`streamer.kafka.acls`) are what the role may do, for the lines of authorization failures."""
    if name == "kafka-python":
        from streamer.kafka.kafka_python import KafkaPythonClients

        return KafkaPythonClients(connection, tuning, topic, metrics, needs)
    if name == "confluent":
        from streamer.errors import UserError

        try:
            from streamer.kafka.confluent import ConfluentClients
        except ImportError as exc:
            raise UserError(f"--kafka-client confluent needs the confluent-kafka package ({exc}); install it "
                            "with pip install 'rnn-streamer[confluent]' (or pip install confluent-kafka), or "
                            "use --kafka-client kafka-python") from None
        return ConfluentClients(connection, tuning, topic, metrics, needs)
    raise ValueError(f"unknown Kafka client {name!r}; expected one of {', '.join(CLIENT_NAMES)}")

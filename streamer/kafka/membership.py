"""Static group membership (KIP-345): a restarted instance gets its partitions back at once.

A dynamic member that dies (kill -9, OOM, a lost host) keeps its partitions until the broker's session
timeout expires (45 s by default), and a restarted instance joins as a new member: its partitions wait
the whole timeout. With a stable ``group.instance.id`` (``--instance-id``, default
``streamer-<group>-<input>-<hostname>``, like the transactional id), the restarted instance is the same
member: the broker hands it the dead one's assignment as soon as it joins (measured: ~0.1 s to the
assignment; `benchmarks/bench_failover.py`). Two live processes must never share an id: the later one
fences the earlier, which then stops (exit 2).

Shutdown (SIGTERM): a static member that closes does not leave the group (kafka-python, librdkafka and the
Java client all skip LeaveGroup for static members), so its partitions would sit unserved until the session
timeout. By default serve therefore has it leave (``Consumer.close(leave=True)``): with kafka-python the
consumer's own close() sends LeaveGroup (`leave_on_close`); librdkafka offers no such switch, so after its
close() the member is removed the way Java's ``Admin.removeMembersFromConsumerGroup`` does it, a LeaveGroup
naming its group.instance.id (`remove_static_member`, needing only Read on the group). A scale-down hands the
partitions over at once, and a restart costs two quick rebalances. ``--stay-in-group`` keeps the
static behaviour for rolling restarts: no rebalance at all if the instance is back within the session
timeout, but a scale-down leaves its partitions unserved until then.

Fencing: a second live process with the same id makes the broker fence the first (kafka-python:
FencedInstanceIdError; librdkafka: the fatal error FENCED_INSTANCE_ID), which stops with `fenced_message`
(exit 2) and does not leave the group (that would remove the other process).
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("streamer.serve")


def default_instance_id(group_id: str, input_topic: str) -> str:
    """Stable per instance when the host name is (a StatefulSet pod, a fixed container name)."""
    return f"streamer-{group_id}-{input_topic}-{socket.gethostname()}"


def leave_on_close(consumer) -> bool:
    """Make the next ``consumer.close()`` send LeaveGroup although the member is static (kafka-python 3.x
    decides with `is_dynamic_member`); returns whether it will. The group rebalances at once instead of
    waiting out the session timeout."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "group_instance_id", None) is None:
        return False  # dynamic: close() leaves by itself
    if not callable(getattr(coordinator, "is_dynamic_member", None)):
        log.warning("this kafka-python version cannot be told to leave the group as a static member; the "
                    "partitions of this instance move after the session timeout")
        return False
    coordinator.is_dynamic_member = lambda: True  # this instance only; close() then sends LeaveGroup
    return True


def fenced_message(group_id: str, instance_id: str | None) -> str:
    return (f"another process joined consumer group {group_id} with this instance's --instance-id {instance_id!r}, "
            "so the broker fenced this one: give every serve instance its own --instance-id (or run one per host "
            "with the default)")


def remove_static_member(connection, group_id: str, instance_id: str, timeout_ms: int = 10000) -> None:
    """Remove the static member `instance_id` from `group_id` (LeaveGroup v3+ by group.instance.id, as an admin
    client sends it; Kafka 2.4+); its partitions move at once. The member must have stopped (closed)."""
    from kafka import KafkaAdminClient
    from kafka.admin import MemberToRemove
    from kafka.errors import KafkaError, UnknownMemberIdError

    admin = KafkaAdminClient(**{**connection.client_kwargs(), "client_id": connection.client_id + "-leave",
                                "request_timeout_ms": timeout_ms})
    try:
        results = admin.remove_group_members(group_id, [MemberToRemove(group_instance_id=instance_id,
                                                                       reason="streamer serve stopped")])
    finally:
        admin.close()
    for error in results.values():
        if error is not None and issubclass(error, KafkaError) and error.errno != 0 \
                and not issubclass(error, UnknownMemberIdError):  # unknown: it was not a member (any more)
            raise error(f"removing static member {instance_id} from group {group_id}")
    log.info("left group %s as static member %s", group_id, instance_id)

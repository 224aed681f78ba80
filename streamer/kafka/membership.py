"""Static group membership (KIP-345): a restarted instance gets its partitions back at once.

A dynamic member that dies (kill -9, OOM, a lost host) keeps its partitions until the broker's session
timeout expires (45 s by default), and a restarted instance joins as a new member: its partitions wait
the whole timeout. With a stable ``group.instance.id`` (``--instance-id``, default
``streamer-<group>-<input>-<hostname>``, like the transactional id), the restarted instance is the same
member: the broker hands it the dead one's assignment as soon as it joins (measured: ~0.1 s to the
assignment; `benchmarks/bench_failover.py`). Two live processes must never share an id: the later one
fences the earlier, which then stops (exit 2).

Shutdown (SIGTERM): a static member that closes does not leave the group (kafka-python and the Java
client skip LeaveGroup for static members), so its partitions would sit unserved until the session
timeout. By default serve therefore sends LeaveGroup itself (`leave_on_close`): a scale-down hands the
partitions over at once, and a restart costs two quick rebalances. ``--stay-in-group`` keeps the
static behaviour for rolling restarts: no rebalance at all if the instance is back within the session
timeout, but a scale-down leaves its partitions unserved until then.
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

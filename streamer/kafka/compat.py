"""A work-around for a kafka-python 3.0.x group-join bug, applied by the serve loop.

The bug: a rejoin can be triggered by a metadata change (the group leader's assignment snapshot no
longer matches the topic metadata, e.g. right after start-up when the first assignment was made
before the topic's partitions were known). ``join_group_async`` runs ``while self.need_rejoin()``;
when the JoinGroup/SyncGroup round trip outlasts one ``consumer.poll(timeout_ms)``, the next poll
re-checks ``need_rejoin()``, which is now False, because performing the assignment refreshed the
snapshot. The finished join is never completed: the member stays "rebalancing" with heartbeats
disabled, is dropped by the broker after the session timeout, and never rejoins
(reproduced: about 1 start-up in 40 with a 50 ms poll timeout).

The fix: a join that has begun (``rejoining``, set after the revoke callback and cleared only when
the join completes) keeps ``need_rejoin()`` true until it is completed.
"""

from __future__ import annotations

_PATCHED = "_streamer_rejoin_patch"


def apply() -> bool:
    """Patch kafka-python 3.0.x (idempotent); returns whether the patch is in place."""
    import kafka
    from kafka.coordinator.base import BaseCoordinator

    if getattr(BaseCoordinator, _PATCHED, False):
        return True
    if not kafka.__version__.startswith("3.0."):
        return False
    original = BaseCoordinator.need_rejoin

    def need_rejoin(self):
        return original(self) or bool(getattr(self, "rejoining", False))

    need_rejoin.__doc__ = original.__doc__
    BaseCoordinator.need_rejoin = need_rejoin
    setattr(BaseCoordinator, _PATCHED, True)
    return True

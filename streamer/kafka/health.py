"""The group consumer's health, as the serve loop judges it (no Kafka library here; see `streamer.kafka.service`).

- Connections: the consumer's connection count, exported every second (``streamer_kafka_connections``); a
  drop to none is a broker outage, counted once (``errors_total{kind="connect"}``) and logged, and so is
  the return.
- A stuck member: a consumer that stays outside a stable group longer than any rebalance may take (the
  broker's rebalance timeout is max.poll.interval.ms, plus a session) is replaced: the group has moved on
  (kafka-python 3.0.12 can lose a rejoin; librdkafka reports no state and is never judged stuck).
- A fence right after an outage: a static member whose session timed out while the brokers were out of
  reach can be told it is fenced when they are back although no other process has its group.instance.id
  (librdkafka 2.x: after the local session time-out it drops its member id and its next heartbeat is
  answered FENCED_INSTANCE_ID). A fence within a session time-out (plus a margin) of an outage is therefore
  taken for that: the consumer is replaced and rejoins with the same id, once per outage. Any other fence
  means another live process has the id, and serve stops (`streamer.kafka.membership.fenced_message`).
"""

from __future__ import annotations

import logging

log = logging.getLogger("streamer.serve")

OUTAGE_MARGIN_S = 30.0  # a fence this long after the session time-out that followed an outage is a real one


class GroupHealth:
    def __init__(self, metrics, session_timeout_s: float, stuck_after_s: float):
        self.metrics = metrics
        self.session_timeout_s = session_timeout_s
        self.stuck_after_s = stuck_after_s
        self._disconnected_since: float | None = None
        self._last_outage: float | None = None  # when the brokers were last seen out of reach (monotonic)
        self._unstable_since: float | None = None

    def connections(self, count: int | None, now: float) -> None:
        """The consumer's connection count now (the watcher thread, every second; None: not known)."""
        if count is None:
            return
        self.metrics.connections.set(count)
        if count == 0:
            self._last_outage = now
            if self._disconnected_since is None:
                self._disconnected_since = now
                self.metrics.error("connect")
                log.warning("no connection to any broker; retrying (processing resumes when they are back)")
        elif self._disconnected_since is not None:
            log.info("brokers reachable again after %.1fs", now - self._disconnected_since)
            self._disconnected_since = None

    def stuck(self, stable: bool | None, now: float) -> bool:
        """Whether the consumer (`stable`: whether it is a stable member now; None: not known) has stayed
        outside a stable group for longer than `stuck_after_s`; then the clock starts again."""
        if stable in (True, None):
            self._unstable_since = None
            return False
        if self._unstable_since is None:
            self._unstable_since = now
            return False
        if now - self._unstable_since < self.stuck_after_s:
            return False
        log.error("the consumer has not been a stable group member for %.0fs; replacing it", now - self._unstable_since)
        self._unstable_since = None
        return True

    def fence_after_outage(self, now: float) -> bool:
        """Whether a fence now follows an outage closely enough to be the client's own stale membership (see
        the module docstring); True at most once per outage."""
        last = self._last_outage
        if last is None or now - last > self.session_timeout_s + OUTAGE_MARGIN_S:
            return False
        self._last_outage = None
        log.warning("fenced as a static member %.0fs after the brokers were out of reach: taken for this "
                    "client's own expired membership, not another process; rejoining with a new consumer",
                    now - last)
        return True

"""What each streamer role may do on a broker that enforces ACLs: one list, used everywhere.

A `Need` is one resource (topic, group, transactional id) and the operations a role needs on it. From the
same lists come the `kafka-acls.sh` lines of the README and of `streamer topics acls`, the start-up check
that names a missing ACL before anything runs (`missing_topic_access`), the operation an authorization
failure is about (`streamer.kafka.failures`), and the ACLs the tests grant.

`serve` needs (least privilege; nothing on the cluster):

- input topic: Read (its events; Describe comes with it);
- output and dead-letter topics: Write, DescribeConfigs (their limits are read at start-up);
- changelog topic: Read (restore), Write (checkpoints), DescribeConfigs (its cleanup.policy is checked);
- consumer group: Read (join, commit offsets);
- --exactly-once: Write on its transactional id (the default ids share the prefix streamer-<group>-<input>-);
- --create-topics: Create on the four topics (or create them as an admin with `streamer topics create`).

`produce` needs Write on its topic. Describe is listed wherever it is needed although Read/Write imply it, so
that the lines read the same as the operations Kafka reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamer.errors import UserError

TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER = "topic", "group", "transactional-id", "cluster"


@dataclass(frozen=True)
class Need:
    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID or CLUSTER
    name: str
    operations: tuple[str, ...]  # Kafka's names: Read, Write, Describe, DescribeConfigs, Create, ...
    prefixed: bool = False  # the ACL's pattern type: PREFIXED (name is a prefix) or LITERAL

    def covers(self, resource: str, name: str) -> bool:
        if resource != self.resource:
            return False
        return name.startswith(self.name) if self.prefixed else name == self.name

    def kafka_acls(self, principal: str, bootstrap: str = "BROKER:PORT",
                   command_config: str = "admin.properties") -> str:
        """The kafka-acls.sh line that grants this need to `principal` (e.g. User:streamer)."""
        ops = " ".join(f"--operation {op}" for op in self.operations)
        where = "--cluster" if self.resource == CLUSTER else f"--{self.resource} {self.name}"
        pattern = " --resource-pattern-type prefixed" if self.prefixed else ""
        return (f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {command_config} --add "
                f"--allow-principal {principal} {ops} {where}{pattern}")


def default_transactional_id_prefix(group_id: str, input_topic: str) -> str:
    """What every default --transactional-id (streamer-<group>-<input>-<hostname>) starts with."""
    return f"streamer-{group_id}-{input_topic}-"


def serve_needs(topics, group_id: str, *, exactly_once: bool = True, transactional_id: str | None = None,
                create_topics: bool = False) -> list[Need]:
    """What `streamer serve` needs for `topics` (a streamer.kafka.topics.Topics) and `group_id`.
    `transactional_id` None: the default ids (a prefixed ACL)."""
    create = ("Create",) if create_topics else ()
    needs = [Need(TOPIC, topics.input, ("Read", "Describe") + create),
             Need(TOPIC, topics.output, ("Write", "Describe", "DescribeConfigs") + create),
             Need(TOPIC, topics.dlq, ("Write", "Describe", "DescribeConfigs") + create),
             Need(TOPIC, topics.changelog, ("Read", "Write", "Describe", "DescribeConfigs") + create),
             Need(GROUP, group_id, ("Read",))]
    if exactly_once:
        if transactional_id is None:
            needs.append(Need(TRANSACTIONAL_ID, default_transactional_id_prefix(group_id, topics.input),
                              ("Write", "Describe"), prefixed=True))
        else:
            needs.append(Need(TRANSACTIONAL_ID, transactional_id, ("Write", "Describe")))
    return needs


def producer_needs(topic: str) -> list[Need]:
    """What `streamer produce` needs."""
    return [Need(TOPIC, topic, ("Write", "Describe"))]


def topics_create_needs(topics) -> list[Need]:
    """What `streamer topics create` needs (an admin usually has it all)."""
    return [Need(TOPIC, name, ("Create", "Describe", "DescribeConfigs")) for name in topics.all()]


def operations_for(needs, resource: str, name: str) -> tuple[str, ...] | None:
    for need in needs:
        if need.covers(resource, name):
            return need.operations
    return None


def need_for(needs, resource: str, name: str | None = None) -> Need | None:
    """The need for this resource (with `name` None: the first of its type, e.g. the one group)."""
    found = [n for n in needs if n.resource == resource and (name is None or n.covers(resource, name))]
    return found[0] if found else None


# --------------------------------------------------------------------------- start-up check

_OPERATION_CODES = {"Read": "READ", "Write": "WRITE", "Describe": "DESCRIBE", "DescribeConfigs": "DESCRIBE_CONFIGS",
                    "Create": "CREATE", "Delete": "DELETE", "Alter": "ALTER", "AlterConfigs": "ALTER_CONFIGS"}
TOPIC_AUTHORIZATION_FAILED = 29


def missing_topic_access(described, needs) -> list[tuple[Need, tuple[str, ...]]]:
    """[(need, operations not granted)] from a Metadata answer with topic authorized operations: `described`
    is a list of {"name", "error_code", "authorized_operations": ["READ", ...] or None}. A topic the principal
    may not even Describe (Kafka then does not say whether it exists) misses everything; a topic without
    authorized_operations (an old broker) is not judged."""
    by_name = {d["name"]: d for d in described}
    missing = []
    for need in needs:
        if need.resource != TOPIC or need.name not in by_name:
            continue
        d = by_name[need.name]
        if d.get("error_code") == TOPIC_AUTHORIZATION_FAILED:
            missing.append((need, need.operations))
            continue
        granted = d.get("authorized_operations")
        if granted is None:
            continue
        lacking = tuple(op for op in need.operations if _OPERATION_CODES.get(op, op.upper()) not in set(granted))
        if lacking:
            missing.append((need, lacking))
    return missing


def check_topic_access(admin, needs, conn) -> None:
    """Raise UserError naming every topic and operation `conn`'s principal lacks (`admin`: a
    `streamer.kafka.client.Admin`, either client). Call it once the topics exist: Create is not judged (a
    topic that exists needs no Create)."""
    topics = [Need(n.resource, n.name, tuple(op for op in n.operations if op != "Create"), n.prefixed)
              for n in needs if n.resource == TOPIC]
    if not topics:
        return
    missing = missing_topic_access(admin.topic_access([n.name for n in topics]), topics)
    if missing:
        raise UserError(missing_access_line(missing, conn))


def principal(conn) -> str:
    """The Kafka principal a connection authenticates as, as ACLs name it."""
    if conn.security_protocol.startswith("SASL_"):
        return f"User:{conn.sasl_username}"
    if conn.ssl_certfile:
        return "User:<the subject of --ssl-certfile>"
    return "User:ANONYMOUS"


def missing_access_line(missing, conn) -> str:
    who = principal(conn)
    what = "; ".join(f"{need.resource} {need.name}: {', '.join(ops)}" for need, ops in missing)
    grants = "; ".join(Need(need.resource, need.name, ops, need.prefixed).kafka_acls(who, conn.bootstrap_servers)
                       for need, ops in missing)
    return (f"not authorized: {who} lacks ACLs for {what} (a topic it may not Describe may also not exist; Kafka "
            f"does not tell); grant them as an admin: {grants}")


def kafka_python_acls(principal_name: str, needs) -> list:
    """The needs as kafka-python ACL objects (for KafkaAdminClient.create_acls)."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    types = {TOPIC: ResourceType.TOPIC, GROUP: ResourceType.GROUP, TRANSACTIONAL_ID: ResourceType.TRANSACTIONAL_ID,
             CLUSTER: ResourceType.CLUSTER}
    acls = []
    for need in needs:
        pattern = ResourcePattern(types[need.resource], "kafka-cluster" if need.resource == CLUSTER else need.name,
                                  ACLResourcePatternType.PREFIXED if need.prefixed else ACLResourcePatternType.LITERAL)
        for op in need.operations:
            acls.append(ACL(principal_name, "*", ACLOperation[_OPERATION_CODES.get(op, op.upper())],
                            ACLPermissionType.ALLOW, pattern))
    return acls

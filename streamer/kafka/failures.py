"""A Kafka client's failure as one clear line for the user, or None: a condition to wait out and retry.

Fatal (retrying cannot fix them: the command stops with the line and exit code 2):

- authentication: a wrong user name or password, a SASL mechanism the broker does not offer;
- authorization: a topic, group or transactional id without the ACL the role needs; the line names the
  resource, the operation (from the role's `streamer.kafka.acls` needs) and the kafka-acls.sh line that grants it;
- TLS: a broker certificate the CA file does not vouch for, TLS against a plaintext port or the reverse, a
  client certificate the broker wants;
- client settings the client library rejects, a broker too old for a request.

Not fatal (None): a broker that is down or unreachable, time-outs, leader changes, anything else.

Both client libraries: kafka-python exceptions (kafka.errors) and confluent-kafka errors (`KafkaError`, or a
`KafkaException` carrying one), also as the `cause` of a `streamer.kafka.client.ClientError`, told apart by
their `name()` codes (_AUTHENTICATION, SASL_AUTHENTICATION_FAILED, TOPIC_AUTHORIZATION_FAILED,
GROUP_AUTHORIZATION_FAILED, TRANSACTIONAL_ID_AUTHORIZATION_FAILED, _SSL, _TRANSPORT, ...) without importing
confluent_kafka. Where a client can only say that it cannot get through
(kafka-python reports a wrong password or a TLS mismatch as a bootstrap time-out; librdkafka reports some of
them as a transport error), `streamer.kafka.probe` connects once the way the client would and says which.

A service calls it wherever it would otherwise count and retry an error::

    line = explain(exc, connection, needs, topic=record_topic_if_known)
    if line:
        raise UserError(line)   # the CLI prints it as one line and exits 2
    ...count, back off, retry...

The password never appears in a line: lines are built from names and the broker's own messages, and
`connection`'s secrets are masked in the result anyway.
"""

from __future__ import annotations

from streamer.kafka import probe as _probe
from streamer.kafka.acls import CLUSTER, GROUP, TOPIC, TRANSACTIONAL_ID, Need, need_for, principal

# confluent-kafka error codes (KafkaError.name()) by what they mean
_AUTHENTICATION = {"_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED"}
_AUTHORIZATION = {"TOPIC_AUTHORIZATION_FAILED": TOPIC, "GROUP_AUTHORIZATION_FAILED": GROUP,
                  "TRANSACTIONAL_ID_AUTHORIZATION_FAILED": TRANSACTIONAL_ID,
                  "CLUSTER_AUTHORIZATION_FAILED": CLUSTER}
_ASK_THE_BROKER = {"_SSL", "_TRANSPORT", "_ALL_BROKERS_DOWN", "UNSUPPORTED_SASL_MECHANISM", "ILLEGAL_SASL_STATE"}
_SETTINGS = {"_INVALID_ARG", "_UNSUPPORTED_FEATURE", "UNSUPPORTED_VERSION"}


def explain(exc: BaseException, conn, needs=(), *, topic: str | None = None, probe: bool = True) -> str | None:
    """One line if `exc` (or the error it was raised from) is a failure that retrying cannot fix, else None.

    `conn`: the streamer.kafka.config.Connection the client was made with; `needs`: the role's
    streamer.kafka.acls needs (what each resource is used for); `topic`: the topic the failure is about when
    the caller knows it (a confluent delivery report's or message's topic); `probe`: may connect to the broker
    to tell a wrong password or TLS setting from a broker that is down (at start-up; a running service that
    loses its broker should just wait)."""
    seen = 0
    while exc is not None and seen < 4:
        topic = topic or getattr(exc, "topic", None)  # a streamer.kafka.client.ClientError may know it
        code = _confluent_code(exc)
        if code:
            line = _explain_confluent(exc, code, conn, needs, topic, probe)
        else:
            line = _explain_kafka_python(exc, conn, needs, topic, probe)
        if line:
            return mask(line, conn)
        # a ClientError's `cause`: the client's own exception, or librdkafka's error object (not an exception)
        exc, seen = (getattr(exc, "cause", None) or getattr(exc, "__cause__", None)
                     or getattr(exc, "__context__", None)), seen + 1
    return None


def mask(text: str, conn) -> str:
    """`text` with the connection's secrets replaced by ***."""
    for secret in (getattr(conn, "sasl_password", None), getattr(conn, "ssl_key_password", None)):
        if secret:
            text = text.replace(secret, "***")
    return text


def authentication_line(conn, detail: str) -> str:
    return (f"authentication failed for user {conn.sasl_username!r} with SASL {conn.sasl_mechanism} at "
            f"{conn.bootstrap_servers}: {detail}; check --sasl-username and the password (STREAMER_SASL_PASSWORD "
            "or --sasl-password-file) and that the user exists for this mechanism")


def authorization_line(conn, needs, resource: str, names, detail: str) -> str:
    """The principal may not do what the role needs on `names` (of type `resource`; [] when unknown)."""
    who = principal(conn)
    refused = [_refused_need(needs, resource, name) for name in (names or [None])]
    what = "; ".join(f"{', '.join(n.operations)} on {n.resource} {n.name}" for n in refused)
    grants = "; ".join(n.kafka_acls(who, conn.bootstrap_servers) for n in refused)
    return f"not authorized: {who} may not {what} ({detail}); grant it as an admin: {grants}"


_DEFAULT_OPERATIONS = {TOPIC: ("Describe",), GROUP: ("Read",), TRANSACTIONAL_ID: ("Write", "Describe"),
                       CLUSTER: ("IdempotentWrite",)}


def _refused_need(needs, resource: str, name: str | None) -> Need:
    """What the role needs on the refused resource (a prefixed need stays prefixed: every default id needs it);
    for a resource the role does not list, the least a client needs on it."""
    found = need_for(needs, resource, name)
    if found is not None:
        return found
    default = "kafka-cluster" if resource == CLUSTER else f"<the {resource}>"
    return Need(resource, name or default, _DEFAULT_OPERATIONS[resource])


# --------------------------------------------------------------------------- kafka-python


def _explain_kafka_python(exc, conn, needs, topic, probe) -> str | None:
    try:
        from kafka import errors as e
    except ImportError:  # no kafka-python: nothing of its kind to explain
        return None
    from streamer.errors import UserError

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, e.SaslAuthenticationFailedError):
        return authentication_line(conn, _detail(exc))
    if isinstance(exc, e.UnsupportedSaslMechanismError):
        return f"the broker does not accept SASL mechanism {conn.sasl_mechanism}: {_detail(exc)}; set --sasl-mechanism"
    if isinstance(exc, e.TopicAuthorizationFailedError):
        return authorization_line(conn, needs, TOPIC, _names(exc, topic), type(exc).__name__)
    if isinstance(exc, e.GroupAuthorizationFailedError):
        return authorization_line(conn, needs, GROUP, _names(exc, None), type(exc).__name__)
    if isinstance(exc, e.TransactionalIdAuthorizationFailedError):
        return authorization_line(conn, needs, TRANSACTIONAL_ID, _names(exc, None), type(exc).__name__)
    if isinstance(exc, e.ClusterAuthorizationFailedError):
        return authorization_line(conn, needs, CLUSTER, [], type(exc).__name__)
    if isinstance(exc, e.AuthorizationError):
        return f"not authorized: {principal(conn)} was refused ({type(exc).__name__}: {_detail(exc)}); check its ACLs"
    if isinstance(exc, e.KafkaConfigurationError):
        return f"the Kafka client rejected its settings: {_detail(exc)}"
    if isinstance(exc, e.UnsupportedVersionError):
        return f"the broker does not support a request streamer needs ({_detail(exc)}); Kafka 2.8 or newer is needed"
    cannot_get_through = tuple(getattr(e, name) for name in ("KafkaTimeoutError", "NoBrokersAvailable",
                                                            "KafkaConnectionError", "IllegalSaslStateError")
                               if hasattr(e, name))  # NoBrokersAvailable: kafka-python 2.x
    if probe and isinstance(exc, cannot_get_through):
        return _probe.probe(conn)
    return None


def _names(exc, topic: str | None) -> list[str]:
    """The resource names a kafka-python authorization error carries (a name, or a set of them)."""
    if topic:
        return [topic]
    names: list[str] = []
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, str) and arg and " " not in arg:
            names.append(arg)
        elif isinstance(arg, (set, frozenset, list, tuple)):
            names.extend(sorted(str(a) for a in arg))
    return names


def _detail(exc) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --------------------------------------------------------------------------- confluent-kafka


def _confluent_code(exc) -> str | None:
    """KafkaError.name() of a confluent-kafka error (or of the KafkaError a KafkaException carries)."""
    err = _confluent_error(exc)
    if err is None:
        return None
    try:
        return str(err.name())
    except Exception:  # noqa: BLE001 - not a confluent error after all
        return None


def _confluent_error(exc):
    for candidate in (exc, *(getattr(exc, "args", ()) or ())[:1]):
        if callable(getattr(candidate, "name", None)) and callable(getattr(candidate, "code", None)) \
                and callable(getattr(candidate, "str", None)):
            return candidate
    return None


def _explain_confluent(exc, code: str, conn, needs, topic, probe) -> str | None:
    err = _confluent_error(exc)
    detail = " ".join(str(err.str()).split())
    if code in _AUTHENTICATION:
        return authentication_line(conn, detail)
    if code in _AUTHORIZATION:
        resource = _AUTHORIZATION[code]
        names = [topic] if resource == TOPIC and topic else []
        if resource == GROUP and not names:
            group = need_for(needs, GROUP)
            names = [group.name] if group else []
        return authorization_line(conn, needs, resource, names, code)
    if code in _ASK_THE_BROKER:
        if not probe:
            return None
        found = _probe.probe(conn)
        if found:
            return found
        if code == "_SSL" and "certificate verify failed" in detail.lower():
            return (f"TLS failed with the broker at {conn.bootstrap_servers}: {detail}; pass the CA that signed the "
                    "broker's certificate with --ssl-cafile")
        return None
    if code in _SETTINGS:
        return f"the Kafka client stopped: {code}: {detail}"
    return None

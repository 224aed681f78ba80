"""Why can a Kafka client not get through to a broker that answers on its port? One short look.

kafka-python 3.0 reports a failed bootstrap the same way whatever the cause (a wrong password, TLS against a
plaintext port, a certificate signed by an unknown CA): a timeout, exactly as for a broker that is down. And a
client should keep retrying a broker that is down, but stop at once with a clear line when its own settings are
wrong. `probe(connection)` tells the two apart: it opens one connection to each bootstrap server the way the
client would (TCP, then TLS with the same CA, client certificate and host name check, then SASL with the same
user and mechanism) and returns one line saying what the broker refused, or None when

- no broker can be reached at all (connection refused, time-out): down or unreachable, so retry as before;
- everything succeeds: the credentials and TLS settings are good, the failure was something else.

Only the standard library (socket, ssl, hashlib, hmac) and four Kafka requests (ApiVersions v0, Metadata v4,
SaslHandshake v1, SaslAuthenticate v0/v1), so it is the same for every Kafka client library. The password is
used for the SCRAM proof and never appears in what this returns.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct

API_VERSIONS, METADATA, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 3, 17, 36
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE = 33, 34
CLIENT_ID = b"streamer-probe"


class _Closed(Exception):
    """The broker closed the connection (or sent nothing) where a reply was due."""


class _Refused(Exception):
    """A definite refusal, already worded for the user."""


def probe(conn, timeout_s: float = 5.0) -> str | None:
    """One line saying why `conn` (a streamer.kafka.config.Connection) cannot log in, or None (see module doc)."""
    for server in [s.strip() for s in conn.bootstrap_servers.split(",") if s.strip()]:
        host, _, port = server.rpartition(":")
        try:
            _probe_server(conn, host.strip("[]"), int(port), timeout_s)
        except _Refused as exc:
            return str(exc)
        except (OSError, _Closed, ValueError, struct.error):
            continue  # unreachable, timed out or something unclear here: nothing definite to say
    return None


def _probe_server(conn, host: str, port: int, timeout_s: float) -> None:
    where = f"{host}:{port}"
    tls = conn.security_protocol in ("SSL", "SASL_SSL")
    sock = socket.create_connection((host, port), timeout=timeout_s)  # OSError: down or unreachable
    try:
        if tls:
            sock = _tls_handshake(conn, sock, host, where, timeout_s)
        versions = _api_versions(sock, conn, where, timeout_s, tls)
        if conn.security_protocol.startswith("SASL_"):
            _sasl_login(sock, conn, where, versions)
        else:
            _check_no_sasl_needed(sock, where)
    finally:
        sock.close()


# --------------------------------------------------------------------------- TLS


def _tls_context(conn, where: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = bool(conn.ssl_check_hostname)
    try:
        if conn.ssl_cafile:
            ctx.load_verify_locations(cafile=conn.ssl_cafile)
        if conn.ssl_certfile:
            ctx.load_cert_chain(conn.ssl_certfile, conn.ssl_keyfile, password=conn.ssl_key_password)
    except (ssl.SSLError, OSError) as exc:
        raise _Refused(f"TLS settings for {where} are unusable: cannot load --ssl-cafile/--ssl-certfile/"
                       f"--ssl-keyfile ({_reason(exc)}); pass PEM files (and the key's password via "
                       "STREAMER_SSL_KEY_PASSWORD or --ssl-key-password-file)") from None
    return ctx


def _tls_handshake(conn, sock, host: str, where: str, timeout_s: float):
    ctx = _tls_context(conn, where)
    cafile = f"--ssl-cafile {conn.ssl_cafile}" if conn.ssl_cafile else "no --ssl-cafile (the system's CAs)"
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        why = exc.verify_message or _reason(exc)
        if "hostname" in why.lower() or "ip address mismatch" in why.lower():
            raise _Refused(f"TLS failed: the certificate of the broker at {where} does not name {host} ({why}); "
                           "connect by a name the certificate lists in --bootstrap-servers (or, for testing "
                           "only, --ssl-no-check-hostname)") from None
        raise _Refused(f"TLS failed: the certificate of the broker at {where} is not trusted with {cafile} "
                       f"({why}); pass the CA that signed the broker's certificate with --ssl-cafile (for the "
                       "local broker: .kafka/secure/ca.pem)") from None
    except ssl.SSLError as exc:
        reason = _reason(exc)
        if _wants_client_certificate(exc):
            raise _Refused(_client_certificate_line(where, reason)) from None
        if _plaintext_answers(host, where, timeout_s):
            raise _Refused(_plaintext_port_line(conn, where)) from None
        raise _Refused(f"TLS failed: the handshake with the broker at {where} failed ({reason}); check that "
                       "it is a TLS (SSL or SASL_SSL) listener and the TLS settings") from None
    except (ConnectionError, socket.timeout, OSError):
        # A plaintext broker reads the TLS hello as an oversized request and hangs up.
        if _plaintext_answers(host, where, timeout_s):
            raise _Refused(_plaintext_port_line(conn, where)) from None
        raise


def _client_certificate_line(where: str, reason: str) -> str:
    return (f"TLS failed: the broker at {where} wants a client certificate it trusts ({reason}); pass "
            "--ssl-certfile and --ssl-keyfile, or use the broker's SASL_SSL port")


def _plaintext_port_line(conn, where: str) -> str:
    plain = "SASL_PLAINTEXT" if conn.security_protocol == "SASL_SSL" else "PLAINTEXT"
    return (f"TLS failed: the broker at {where} does not speak TLS on that port (it answers plain Kafka); use "
            f"the broker's TLS port, or --security-protocol {plain} if that listener is meant to be plaintext")


def _plaintext_answers(host: str, where: str, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, int(where.rpartition(":")[2])), timeout=timeout_s) as sock:
            _request(sock, API_VERSIONS, 0, b"")
            return True
    except (OSError, _Closed, struct.error):
        return False


def _tls_listener(host: str, port: int, timeout_s: float) -> str | None:
    """"SSL" or "SASL_SSL" if the port speaks TLS, else None. Unverified: it only asks what the listener is
    (ApiVersions, then an empty Metadata request that a SASL listener refuses before a login)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as sock:
                try:
                    _request(sock, API_VERSIONS, 0, b"")
                    _request(sock, METADATA, 4, struct.pack(">ib", 0, 0))
                except _Closed as exc:
                    cause = exc.__cause__
                    return "SSL" if cause is not None and _wants_client_certificate(cause) else "SASL_SSL"
                return "SSL"
    except (OSError, ssl.SSLError, struct.error):
        return None


def _reason(exc: BaseException) -> str:
    """ssl/OS errors in words: "certificate verify failed", "tlsv13 alert certificate required"..."""
    text = str(exc)
    if "] " in text:  # "[SSL: CODE] words (_ssl.c:1000)"
        text = text.split("] ", 1)[1].rsplit(" (_ssl.c", 1)[0]
    return text or type(exc).__name__


def _wants_client_certificate(exc: BaseException) -> bool:
    text = _reason(exc).lower()
    return any(word in text for word in ("certificate required", "bad certificate", "handshake failure"))


# --------------------------------------------------------------------------- Kafka requests


def _api_versions(sock, conn, where: str, timeout_s: float, tls: bool) -> dict[int, tuple[int, int]]:
    try:
        body = _request(sock, API_VERSIONS, 0, b"")
    except _Closed as exc:
        if tls and isinstance(exc.__cause__, ssl.SSLError) and _wants_client_certificate(exc.__cause__):
            raise _Refused(_client_certificate_line(where, _reason(exc.__cause__))) from None  # TLS 1.3: after
        host, _, port = where.rpartition(":")
        secure = None if tls else _tls_listener(host, int(port), timeout_s)
        if secure:
            raise _Refused(f"TLS failed: the broker at {where} expects TLS ({secure}) on that port and "
                           f"--security-protocol is {conn.security_protocol}; use --security-protocol {secure} with "
                           "--ssl-cafile (the CA that signed the broker's certificate; for the local broker: "
                           ".kafka/secure/ca.pem)") from None
        raise
    error, count = struct.unpack_from(">hi", body, 0)
    versions = {}
    for i in range(max(count, 0)):
        key, low, high = struct.unpack_from(">hhh", body, 6 + 6 * i)
        versions[key] = (low, high)
    return versions


def _check_no_sasl_needed(sock, where: str) -> None:
    """A SASL listener answers ApiVersions unauthenticated but hangs up on anything else before a login."""
    try:
        _request(sock, METADATA, 4, struct.pack(">ib", 0, 0))  # no topics, no auto-creation
    except _Closed:
        raise _Refused(f"the broker at {where} closed the connection on a request made without logging in: it "
                       "probably wants SASL; use --security-protocol SASL_SSL (or SASL_PLAINTEXT) with "
                       "--sasl-mechanism and --sasl-username") from None


def _sasl_login(sock, conn, where: str, versions: dict) -> None:
    mechanism, user = conn.sasl_mechanism, conn.sasl_username
    try:
        body = _request(sock, SASL_HANDSHAKE, 1, _string(mechanism))
    except _Closed:
        raise _Refused(f"the broker at {where} hung up on the SASL handshake: that listener does not take SASL "
                       f"logins; check --security-protocol ({conn.security_protocol}) and the port") from None
    error, offered = _handshake_reply(body)
    if error == UNSUPPORTED_SASL_MECHANISM:
        raise _Refused(f"the broker at {where} does not accept SASL mechanism {mechanism} (it offers "
                       f"{', '.join(offered) or 'none'}); set --sasl-mechanism accordingly")
    if error == ILLEGAL_SASL_STATE:
        raise _Refused(f"the broker at {where} refused a SASL login on that listener; check --security-protocol "
                       f"({conn.security_protocol}) and the port")
    if error:
        return  # something else: nothing definite to say
    version = min(1, versions.get(SASL_AUTHENTICATE, (0, 1))[1])

    def exchange(token: bytes) -> bytes:
        reply = _request(sock, SASL_AUTHENTICATE, version, struct.pack(">i", len(token)) + token)
        code, message, data = _authenticate_reply(reply)
        if code:
            detail = message or f"error code {code}"
            raise _Refused(f"authentication failed for user {user!r} with SASL {mechanism} at {where}: {detail}; "
                           "check --sasl-username and the password (STREAMER_SASL_PASSWORD or "
                           "--sasl-password-file) and that the user exists for this mechanism")
        return data

    try:
        if mechanism == "PLAIN":
            exchange(b"\0" + user.encode() + b"\0" + (conn.sasl_password or "").encode())
        elif mechanism.startswith("SCRAM-"):
            _scram(user, conn.sasl_password or "", mechanism, exchange)
    except _Closed:
        raise _Refused(f"authentication failed for user {user!r} with SASL {mechanism} at {where}: the broker "
                       "closed the connection during the login; check the user name, the password and "
                       "--sasl-mechanism") from None


def _scram(user: str, password: str, mechanism: str, exchange) -> None:
    """RFC 5802 client side; the server's final message proves it knew the credentials too."""
    digest = "sha512" if mechanism.endswith("512") else "sha256"
    name = user.replace("=", "=3D").replace(",", "=2C")
    nonce = base64.b64encode(os.urandom(24)).decode()
    bare = f"n={name},r={nonce}"
    first = exchange(b"n,," + bare.encode()).decode()
    attrs = dict(part.split("=", 1) for part in first.split(",") if "=" in part)
    if not attrs.get("r", "").startswith(nonce):
        raise _Closed()
    salted = hashlib.pbkdf2_hmac(digest, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.digest(salted, b"Client Key", digest)
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{bare},{first},{without_proof}".encode()
    signature = hmac.digest(hashlib.new(digest, client_key).digest(), auth_message, digest)
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    exchange(f"{without_proof},p={base64.b64encode(proof).decode()}".encode())


def _request(sock, api_key: int, version: int, body: bytes) -> bytes:
    """Send one request (header v1) and return the reply's body after its correlation id."""
    correlation = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
    header = struct.pack(">hhih", api_key, version, correlation, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    try:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
    except (ConnectionError, socket.timeout, ssl.SSLError) as exc:
        raise _Closed() from exc
    size = struct.unpack(">i", _read(sock, 4))[0]
    if not 4 <= size <= 1 << 24:
        raise _Closed()
    reply = _read(sock, size)
    if struct.unpack_from(">i", reply)[0] != correlation:
        raise _Closed()
    return reply[4:]


def _read(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except (ConnectionError, socket.timeout, ssl.SSLError) as exc:
            raise _Closed() from exc
        if not chunk:
            raise _Closed()
        data += chunk
    return data


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _handshake_reply(body: bytes) -> tuple[int, list[str]]:
    error, count = struct.unpack_from(">hi", body)
    offered, pos = [], 6
    for _ in range(max(count, 0)):
        (n,) = struct.unpack_from(">h", body, pos)
        offered.append(body[pos + 2:pos + 2 + n].decode(errors="replace"))
        pos += 2 + n
    return error, offered


def _authenticate_reply(body: bytes) -> tuple[int, str | None, bytes]:
    error, n = struct.unpack_from(">hh", body)
    message = body[4:4 + n].decode(errors="replace") if n >= 0 else None
    pos = 4 + max(n, 0)
    (size,) = struct.unpack_from(">i", body, pos)
    return error, message, body[pos + 4:pos + 4 + max(size, 0)]

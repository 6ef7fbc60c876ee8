"""Who may call the gateway's HTTP routes, from which web pages, and how much they may send. Pure logic: no web
framework, no Ray, no torch, so the Serve gateway and the bench's aiohttp gateway apply the very same rules.

Access is **off** by default: then only this machine may call (``anystream-serve`` refuses a non-loopback
``http_options.host`` without access), and the rules below guard against web pages in a local browser:

- an ``Origin`` header (sent by browsers) must be a loopback page (``http://127.0.0.1:*``, ``http://localhost:*``,
  ``http://[::1]:*``), one of ``allowed_origins`` (exact match), or the server's own page (the Origin's host[:port]
  is the request's Host: the page the gateway serves at ``/`` calling back): 403 ``forbidden_origin``;
- the ``Host`` header must name a loopback host: 403 ``forbidden_host`` (DNS rebinding: a page whose own name has
  been pointed at 127.0.0.1 sends its own name as Host);
- ``POST /offer`` must say ``Content-Type: application/json``: 415 ``unsupported_media_type``. Any web page may send
  a text/plain POST to a local server without asking (a CORS "simple request"); an application/json one needs the
  server's consent first (a preflight), which the server gives only to allowed origins.

Access is **on** when API keys or a token secret are configured (or the environment variables that hold them are
named). Then every request but ``/health`` and the page (``/``, ``/static/*``: it holds no secret, and
:func:`check_browser` applies the Origin and Host rules alone) needs ``Authorization: Bearer <credential>``, where the
credential is an API key or a signed session token (:func:`mint_token`): 401 ``unauthorized`` otherwise. The Origin
rule stays; the Host rule is dropped (the server is then meant to be reached by any of its names).

A request's **client id** is the name its API key is listed under, or the ``sub`` of its token. Per-client limits
(``max_sessions_per_client``) apply to that id; with access off there is no client id (``None``), only the
server-wide session limit: every local caller is the same user.

Session tokens are ``<base64url payload>.<base64url HMAC-SHA256 of the payload text>``; the payload is JSON
``{"sub": client id, "exp": unix seconds, "nonce": random}``. A token's MAC is checked before its payload is parsed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

DEFAULT_MAX_BODY_BYTES = 128 * 1024  # an offer's SDP is a few KiB; OfferRequest caps it at 64 KiB
DEFAULT_MAX_SESSIONS_PER_CLIENT = 4
MIN_API_KEY_CHARS = 16
MIN_TOKEN_SECRET_CHARS = 32
# Longer than any key or token this module makes: refused before it is hashed or decoded.
MAX_CREDENTIAL_CHARS = 2048
CLIENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # client ids end up in logs and metrics: keep them plain
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ANY_ORIGIN = "*"
_CONFIG_ORIGIN = re.compile(r"https?://([a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")
_LOOPBACK_ORIGIN = re.compile(r"http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?")
_ORIGIN_PARTS = re.compile(r"(https?)://([^/\s]+)")  # scheme, host[:port]
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
# What a browser may send cross-origin after a preflight, and how long it may remember the answer.
CORS_METHODS = "GET, POST, DELETE"
CORS_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE_S = 600


class AccessDenied(Exception):
    """A request refused before its body is used: ``status`` (HTTP), ``reason`` (a word for programs and metrics),
    ``message`` (for people; never holds a secret)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.message, "reason": self.reason}

    @property
    def headers(self) -> dict[str, str]:
        # RFC 6750: a 401 says which scheme would be accepted.
        return {"WWW-Authenticate": 'Bearer realm="anystream"'} if self.status == 401 else {}


class BodyTooLarge(AccessDenied):
    def __init__(self, limit: int):
        super().__init__(413, "too_large", f"request body exceeds the limit of {limit} bytes")


class InvalidToken(ValueError):
    """A session token that does not verify; ``reason`` is ``malformed``, ``bad_signature`` or ``expired``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AccessConfig:
    """The ``access:`` section of a gateway's config (``AppArgs.access``).

    api_keys: client id -> API key. Prefer ``api_keys_env``: secrets then stay out of the YAML.
    api_keys_env: an environment variable holding ``client:key,client:key`` (read by :meth:`resolve`).
    token_secret / token_secret_env: the HMAC secret of session tokens, or the variable holding it.
    allowed_origins: web pages (``https://app.example.com``, exact match) that may call from a browser besides
        loopback ones. ``*`` (any page) is accepted only with access on: every call still needs a credential.
    max_body_bytes: the largest request body; a larger one is refused while it is read (413).
    max_sessions_per_client: sessions one client id may hold on a replica at once (429 ``client_limit``).
    """

    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    api_keys_env: str | None = None
    token_secret: str | None = field(default=None, repr=False)
    token_secret_env: str | None = None
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_sessions_per_client: int = DEFAULT_MAX_SESSIONS_PER_CLIENT

    def __post_init__(self) -> None:
        if not isinstance(self.api_keys, Mapping):
            raise ValueError("access.api_keys must be a mapping of client id to key")
        keys = dict(self.api_keys)
        _check_api_keys(keys, "access.api_keys")
        object.__setattr__(self, "api_keys", keys)
        for name in ("api_keys_env", "token_secret_env"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and ENV_NAME.fullmatch(value)):
                raise ValueError(f"access.{name} must be an environment variable name, got {value!r}")
        if self.token_secret is not None:
            _check_token_secret(self.token_secret, "access.token_secret")
        if isinstance(self.allowed_origins, str):
            raise ValueError("access.allowed_origins must be a list of origins")
        origins = tuple(_normalize_origin(o) for o in self.allowed_origins)
        if ANY_ORIGIN in origins and not self.enabled:
            raise ValueError(
                "access.allowed_origins: '*' lets every web page drive this server; it is only "
                "accepted with API keys or a token secret configured"
            )
        object.__setattr__(self, "allowed_origins", origins)
        for name in ("max_body_bytes", "max_sessions_per_client"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"access.{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> AccessConfig:
        """From the YAML ``access:`` mapping (None or empty: the defaults, access off). Reads no environment."""
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"access: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "allowed_origins" in options and isinstance(options["allowed_origins"], list):
            options["allowed_origins"] = tuple(options["allowed_origins"])
        return cls(**options)

    @property
    def enabled(self) -> bool:
        """True when credentials are configured, or the variables that hold them are named (a config whose
        variables turn out empty refuses everyone rather than no one)."""
        return bool(self.api_keys or self.token_secret or self.api_keys_env or self.token_secret_env)

    def resolve(self, environ: Mapping[str, str]) -> AccessConfig:
        """A copy with the keys and the secret read from the variables the config names (then named no more).

        Raises:
            ValueError: a named variable is unset or empty, or does not hold what it should (the message names the
                variable, never its value).
        """
        keys, secret = dict(self.api_keys), self.token_secret
        if self.api_keys_env is not None:
            text = environ.get(self.api_keys_env, "")
            if not text.strip():
                raise ValueError(f"access.api_keys_env names {self.api_keys_env}, which is not set")
            from_env = parse_api_keys(text, self.api_keys_env)
            both = sorted(set(keys) & set(from_env))
            if both:
                raise ValueError(f"client id(s) {', '.join(both)} in both access.api_keys and {self.api_keys_env}")
            keys.update(from_env)
        if self.token_secret_env is not None:
            secret = environ.get(self.token_secret_env, "")
            if not secret:
                raise ValueError(f"access.token_secret_env names {self.token_secret_env}, which is not set")
            _check_token_secret(secret, self.token_secret_env)
        return replace(self, api_keys=keys, api_keys_env=None, token_secret=secret, token_secret_env=None)


def parse_api_keys(text: str, source: str = "API keys") -> dict[str, str]:
    """``alice:key1,bob:key2`` (commas or newlines between entries) -> ``{"alice": "key1", "bob": "key2"}``."""
    keys: dict[str, str] = {}
    entries = [e.strip() for e in re.split(r"[,\n]", text) if e.strip()]
    for number, entry in enumerate(entries, 1):
        client_id, sep, key = entry.partition(":")
        # the entry itself may hold a key: errors say which entry, never what it holds
        if not sep or not client_id.strip() or not key.strip():
            raise ValueError(f"entry {number} of {source} is not CLIENT:KEY")
        client_id = client_id.strip()
        if client_id in keys:
            raise ValueError(f"client id {client_id!r} appears twice in {source}")
        keys[client_id] = key.strip()
    _check_api_keys(keys, source)
    return keys


def _check_api_keys(keys: dict[str, str], source: str) -> None:
    for client_id, key in keys.items():
        if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
            raise ValueError(f"{source}: client id {client_id!r} must be 1 to 64 letters, digits, '_', '.' or '-'")
        if not isinstance(key, str) or len(key) < MIN_API_KEY_CHARS or len(key) > MAX_CREDENTIAL_CHARS:
            raise ValueError(
                f"{source}: the key of {client_id!r} must be a string of {MIN_API_KEY_CHARS} to "
                f"{MAX_CREDENTIAL_CHARS} characters (e.g. python -c 'import secrets; "
                f"print(secrets.token_urlsafe(32))')"
            )
    if len(set(keys.values())) != len(keys):
        raise ValueError(f"{source}: two clients share a key (a key must say who is calling)")


def _check_token_secret(secret: Any, source: str) -> None:
    if not isinstance(secret, str) or len(secret) < MIN_TOKEN_SECRET_CHARS:
        raise ValueError(f"{source}: the token secret must have at least {MIN_TOKEN_SECRET_CHARS} characters")


def _normalize_origin(origin: Any) -> str:
    if not isinstance(origin, str):
        raise ValueError(f"access.allowed_origins: {origin!r} is not a string")
    normalized = origin.strip().lower()
    if normalized == ANY_ORIGIN:
        return normalized
    if not _CONFIG_ORIGIN.fullmatch(normalized):
        raise ValueError(
            f"access.allowed_origins: {origin!r} must be scheme://host[:port] (http or https, no path, "
            "no trailing '/'), as browsers send it in the Origin header"
        )
    return normalized


# ---------------------------------------------------------------------------------------------------------
# session tokens


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not _BASE64URL.fullmatch(text):
        raise binascii.Error("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload_text: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), payload_text.encode("ascii"), hashlib.sha256).digest()


def mint_token(secret: str, client_id: str, ttl_s: float, now: float | None = None) -> str:
    """A session token for ``client_id`` valid for ``ttl_s`` seconds from ``now`` (default: the wall clock)."""
    _check_token_secret(secret, "token secret")
    if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
        raise ValueError(f"client id {client_id!r} must be 1 to 64 letters, digits, '_', '.' or '-'")
    if not (isinstance(ttl_s, (int, float)) and math.isfinite(ttl_s) and ttl_s >= 1):
        raise ValueError(f"a token's lifetime must be at least one second, got {ttl_s!r}")
    issued = int(time.time() if now is None else now)
    payload = {"sub": client_id, "exp": issued + math.ceil(ttl_s), "nonce": secrets.token_urlsafe(12)}
    payload_text = _b64encode(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    return f"{payload_text}.{_b64encode(_mac(secret, payload_text))}"


def verify_token(secret: str, token: str, now: float | None = None) -> str:
    """The client id of a valid ``token``; raises :class:`InvalidToken` otherwise."""
    if not isinstance(token, str) or len(token) > MAX_CREDENTIAL_CHARS or token.count(".") != 1:
        raise InvalidToken("malformed", "not a session token")
    payload_text, mac_text = token.split(".")
    try:
        mac = _b64decode(mac_text)
        _b64decode(payload_text)  # the MAC is computed over this text: it must be base64url before anything else
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed", "not a session token") from None
    if not hmac.compare_digest(mac, _mac(secret, payload_text)):
        raise InvalidToken("bad_signature", "the token's signature does not match")
    try:
        payload = json.loads(_b64decode(payload_text))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed", "the token's payload is not JSON") from None
    client_id = payload.get("sub") if isinstance(payload, dict) else None
    expiry = payload.get("exp") if isinstance(payload, dict) else None
    if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
        raise InvalidToken("malformed", "the token names no valid client")
    if isinstance(expiry, bool) or not isinstance(expiry, int):
        raise InvalidToken("malformed", "the token has no expiry")
    if (time.time() if now is None else now) >= expiry:
        raise InvalidToken("expired", "the token has expired")
    return client_id


# ---------------------------------------------------------------------------------------------------------
# requests


def _header_values(headers: Mapping[str, str]) -> dict[str, list[str]]:
    """Every value of every header, by lower-case name. ``items()`` of Starlette's and aiohttp's header objects
    yields repeated headers once each, which ``headers[name]`` would hide."""
    values: dict[str, list[str]] = {}
    for name, value in headers.items():
        values.setdefault(name.lower(), []).append(value)
    return values


def _single(values: dict[str, list[str]], name: str) -> str | None:
    found = values.get(name, [])
    if len(set(found)) > 1:  # two different Origins or credentials: which one would a proxy have checked?
        raise AccessDenied(400, "bad_request", f"more than one {name} header")
    return found[0] if found else None


def origin_allowed(config: AccessConfig, origin: str) -> bool:
    origin = origin.strip().lower()
    if _LOOPBACK_ORIGIN.fullmatch(origin):
        return True
    return origin in config.allowed_origins or (ANY_ORIGIN in config.allowed_origins and config.enabled)


def _host_is_loopback(host: str) -> bool:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _same_origin(origin: str, host: str | None) -> bool:
    """True when ``origin`` is the page of the server the request is addressed to (its host[:port] is the request's
    Host, default ports aside): the gateway's own page (``GET /``) calling back. Browsers send an Origin with every
    POST, even to the page's own server."""
    match = _ORIGIN_PARTS.fullmatch(origin.strip().lower())
    if host is None or match is None:
        return False
    scheme, authority = match.groups()
    default_port = _DEFAULT_PORTS[scheme]
    return authority.removesuffix(default_port) == host.strip().lower().removesuffix(default_port)


def _check_browser(config: AccessConfig, values: dict[str, list[str]]) -> None:
    origin = _single(values, "origin")
    host = _single(values, "host")
    if origin is not None and not (origin_allowed(config, origin) or _same_origin(origin, host)):
        raise AccessDenied(
            403,
            "forbidden_origin",
            f"web pages from {origin[:100]!r} may not call this server (access.allowed_origins)",
        )
    if not config.enabled and host is not None and not _host_is_loopback(host):
        raise AccessDenied(
            403,
            "forbidden_host",
            "this server answers only requests addressed to a loopback host unless access is configured",
        )


def check_browser(config: AccessConfig, headers: Mapping[str, str]) -> None:
    """The Origin and Host rules alone (no credential): for what any caller of this server may fetch, such as the
    page at ``/``, which holds no secret. Raises :class:`AccessDenied` like :func:`authorize`."""
    _check_browser(config, _header_values(headers))


def authorize(config: AccessConfig, headers: Mapping[str, str], now: float | None = None) -> str | None:
    """The client id of a request (None with access off), or :class:`AccessDenied`: 403 ``forbidden_origin`` /
    ``forbidden_host``, 401 ``unauthorized``, 400 ``bad_request`` for a repeated Origin, Host or Authorization."""
    values = _header_values(headers)
    _check_browser(config, values)
    if not config.enabled:
        return None
    authorization = _single(values, "authorization")
    if authorization is None:
        raise AccessDenied(
            401, "unauthorized", "this server needs an API key or token: send 'Authorization: Bearer <key or token>'"
        )
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise AccessDenied(401, "unauthorized", "the Authorization header must be 'Bearer <key or token>'")
    if len(credential) > MAX_CREDENTIAL_CHARS:
        raise AccessDenied(401, "unauthorized", "invalid API key or token")
    client_id = client_for_key(config.api_keys, credential)
    if client_id is not None:
        return client_id
    if config.token_secret is not None:
        try:
            return verify_token(config.token_secret, credential, now)
        except InvalidToken as exc:
            if exc.reason == "expired":  # only a token this server signed gets here: telling it is safe
                raise AccessDenied(401, "unauthorized", "the session token has expired") from None
    raise AccessDenied(401, "unauthorized", "invalid API key or token")


def client_for_key(api_keys: Mapping[str, str], presented: str) -> str | None:
    """The client whose key is ``presented``, comparing digests in constant time (equal lengths, so the time says
    nothing about a key's length either) and always against every key (so it says nothing about which matched)."""
    presented_digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
    matched = None
    for client_id, key in api_keys.items():
        if hmac.compare_digest(hashlib.sha256(key.encode("utf-8")).digest(), presented_digest):
            matched = client_id
    return matched


def require_json(headers: Mapping[str, str]) -> None:
    """415 ``unsupported_media_type`` unless the body is declared ``application/json`` (UTF-8, if a charset is
    given): a web page can send any other type to a local server without a CORS preflight."""
    content_type = _single(_header_values(headers), "content-type") or ""
    media_type, *params = (part.strip().lower() for part in content_type.split(";"))
    charsets = [p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")]
    if media_type != "application/json" or any(c not in ("utf-8", "utf8") for c in charsets):
        shown = content_type[:100] or "none"
        raise AccessDenied(415, "unsupported_media_type", f"the body must be sent as application/json (got {shown})")


def declared_length(headers: Mapping[str, str]) -> int | None:
    """The Content-Length a request declares; None when it has none (a chunked body)."""
    text = _single(_header_values(headers), "content-length")
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise AccessDenied(400, "bad_request", "Content-Length is not a number")
    return int(text)


async def read_limited(chunks: AsyncIterator[bytes], limit: int, declared_length: int | None) -> bytes:
    """The whole body, or :class:`BodyTooLarge` as soon as the declared length or the bytes read so far pass
    ``limit``; no chunk is pulled after that (the rest is never read, let alone held)."""
    if declared_length is not None and declared_length > limit:
        raise BodyTooLarge(limit)
    received = bytearray()
    try:
        async for chunk in chunks:
            if len(received) + len(chunk) > limit:
                raise BodyTooLarge(limit)
            received += chunk
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    return bytes(received)


def cors_headers(config: AccessConfig, headers: Mapping[str, str]) -> dict[str, str]:
    """Headers that let an allowed page read a response (none for a request without an allowed Origin)."""
    origin = _header_values(headers).get("origin", [None])[0]
    if origin is None or not origin_allowed(config, origin):
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def preflight(config: AccessConfig, headers: Mapping[str, str]) -> dict[str, str]:
    """The answer to a browser's CORS preflight (``OPTIONS``): its headers, or :class:`AccessDenied` (403) for a
    page that may not call. A preflight carries no credentials; the request that follows must."""
    _check_browser(config, _header_values(headers))
    allowed = cors_headers(config, headers)
    if not allowed:
        raise AccessDenied(403, "forbidden_origin", "a preflight must come from a web page (an Origin header)")
    return {
        **allowed,
        "Access-Control-Allow-Methods": CORS_METHODS,
        "Access-Control-Allow-Headers": CORS_HEADERS,
        "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
    }

"""assistant.access: API keys, signed session tokens (with an injected clock), origins and hosts, the JSON content-type
rule, body limits while reading, and the config (environment variables, validation, secrets kept out of repr)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from assistant import access
from assistant.access import (
    AccessConfig,
    AccessDenied,
    BodyTooLarge,
    InvalidToken,
    authorize,
    cors_headers,
    declared_length,
    mint_token,
    preflight,
    read_limited,
    require_json,
    verify_token,
)

ROOT = Path(__file__).resolve().parents[1]
ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef"
SECRET = "s" * 40
NOW = 1_700_000_000.0
LOCAL = {"host": "127.0.0.1:8000"}


def denied(config: AccessConfig, headers: dict, now: float | None = None) -> AccessDenied:
    with pytest.raises(AccessDenied) as caught:
        authorize(config, headers, now)
    return caught.value


def bearer(credential: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}", **extra}


class Pairs(list):
    """Headers as a list of pairs with ``items()``, like Starlette's and aiohttp's multi-dicts."""

    def items(self):
        return list(self)


# ----- API keys -----


def test_api_keys_name_the_client_and_anything_else_is_a_401():
    config = AccessConfig(api_keys={"alice": ALICE_KEY, "bob": BOB_KEY})
    assert config.enabled
    assert authorize(config, bearer(ALICE_KEY)) == "alice"
    assert authorize(config, {"Authorization": f"bearer  {BOB_KEY} "}) == "bob"  # scheme and spaces as RFC 6750 allows
    for headers in (
        {},
        bearer(ALICE_KEY + "x"),
        bearer(ALICE_KEY[:-1]),
        {"authorization": ALICE_KEY},
        {"authorization": f"Basic {ALICE_KEY}"},
        {"authorization": "Bearer "},
        bearer("x" * 5000),
    ):
        refusal = denied(config, headers)
        assert (refusal.status, refusal.reason) == (401, "unauthorized"), headers
        assert refusal.headers["WWW-Authenticate"].startswith("Bearer")
        assert ALICE_KEY not in refusal.message and BOB_KEY not in refusal.message
    # two different credentials in one request: which would a proxy in front have checked?
    refusal = denied(config, Pairs([("authorization", f"Bearer {ALICE_KEY}"), ("Authorization", f"Bearer {BOB_KEY}")]))
    assert refusal.status == 400


def test_every_key_is_compared_in_constant_time(monkeypatch):
    compared: list[tuple[bytes, bytes]] = []
    real = access.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    config = AccessConfig(api_keys={"alice": ALICE_KEY, "bob": BOB_KEY, "carol": "carol-key-0123456789ab"})
    assert authorize(config, bearer(ALICE_KEY)) == "alice"
    # all three keys were compared although the first matched, each as a 32-byte digest (length says nothing)
    assert len(compared) == 3 and all(len(a) == len(b) == 32 for a, b in compared)
    compared.clear()
    verify_token(SECRET, mint_token(SECRET, "dave", 60, now=NOW), now=NOW)
    assert len(compared) == 1  # the token's MAC too


def test_keys_come_from_an_environment_variable():
    config = AccessConfig.from_dict({"api_keys_env": "TEST_KEYS"})
    assert config.enabled  # named: on, even before the variable is read (so a missing one refuses everyone)
    assert denied(config, bearer(ALICE_KEY)).status == 401
    resolved = config.resolve({"TEST_KEYS": f" alice:{ALICE_KEY} ,\n bob:{BOB_KEY},"})
    assert resolved.api_keys == {"alice": ALICE_KEY, "bob": BOB_KEY} and resolved.api_keys_env is None
    assert authorize(resolved, bearer(BOB_KEY)) == "bob"
    with pytest.raises(ValueError, match="TEST_KEYS, which is not set"):
        config.resolve({})
    with pytest.raises(ValueError, match="entry 2 of TEST_KEYS") as caught:
        config.resolve({"TEST_KEYS": f"alice:{ALICE_KEY},{BOB_KEY}"})
    assert BOB_KEY not in str(caught.value)  # an error never quotes a secret
    with pytest.raises(ValueError, match="at least|16"):
        config.resolve({"TEST_KEYS": "alice:short"})
    with pytest.raises(ValueError, match="share a key"):
        config.resolve({"TEST_KEYS": f"alice:{ALICE_KEY},bob:{ALICE_KEY}"})
    with pytest.raises(ValueError, match="both"):
        AccessConfig(api_keys={"alice": BOB_KEY}, api_keys_env="TEST_KEYS").resolve({"TEST_KEYS": f"alice:{ALICE_KEY}"})
    secret_config = AccessConfig.from_dict({"token_secret_env": "TEST_SECRET"})
    assert secret_config.resolve({"TEST_SECRET": SECRET}).token_secret == SECRET
    with pytest.raises(ValueError, match="TEST_SECRET, which is not set"):
        secret_config.resolve({"TEST_SECRET": ""})
    with pytest.raises(ValueError, match="at least 32"):
        secret_config.resolve({"TEST_SECRET": "too short"})


def test_config_validation_and_secrets_stay_out_of_repr():
    config = AccessConfig(api_keys={"alice": ALICE_KEY}, token_secret=SECRET)
    assert ALICE_KEY not in repr(config) and SECRET not in repr(config)
    assert not AccessConfig().enabled and not AccessConfig.from_dict(None).enabled
    assert AccessConfig().max_body_bytes == 128 * 1024 and AccessConfig().max_sessions_per_client == 4
    for bad in (
        {"api_key": {}},
        {"max_body_bytes": 0},
        {"max_sessions_per_client": True},
        {"api_keys": {"al ice": ALICE_KEY}},
        {"api_keys_env": "NOT-A-NAME"},
        {"token_secret": "short"},
        {"allowed_origins": "https://a.example"},
        {"allowed_origins": ["https://a.example/path"]},
        {"allowed_origins": ["https://a.example/"]},
        {"allowed_origins": ["*"]},
    ):
        with pytest.raises(ValueError):
            AccessConfig.from_dict(bad)
    # '*' is accepted with credentials (every call still needs one); origins are normalized to what browsers send
    assert AccessConfig.from_dict({"api_keys_env": "K", "allowed_origins": ["*"]}).allowed_origins == ("*",)
    assert AccessConfig.from_dict({"allowed_origins": ["HTTPS://App.Example.com:8443"]}).allowed_origins == (
        "https://app.example.com:8443",
    )


# ----- session tokens -----


def test_a_token_is_valid_until_its_expiry_on_the_injected_clock():
    token = mint_token(SECRET, "alice", ttl_s=60, now=NOW)
    assert verify_token(SECRET, token, now=NOW) == "alice"
    assert verify_token(SECRET, token, now=NOW + 59.9) == "alice"
    with pytest.raises(InvalidToken) as caught:
        verify_token(SECRET, token, now=NOW + 60)
    assert caught.value.reason == "expired"
    # two tokens for the same client and time differ (the nonce)
    assert mint_token(SECRET, "alice", 60, now=NOW) != mint_token(SECRET, "alice", 60, now=NOW)
    config = AccessConfig(token_secret=SECRET)
    assert authorize(config, bearer(token, **LOCAL), now=NOW + 1) == "alice"
    refusal = denied(config, bearer(token), now=NOW + 61)
    assert refusal.status == 401 and "expired" in refusal.message


def _payload(token: str) -> dict:
    text = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def _encode(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_tampered_and_foreign_tokens_are_refused():
    token = mint_token(SECRET, "alice", ttl_s=60, now=NOW)
    payload_text, mac_text = token.split(".")
    longer = {**_payload(token), "exp": int(NOW) + 10**6}
    mallory = {**_payload(token), "sub": "mallory"}
    for forged in (
        f"{_encode(longer)}.{mac_text}",
        f"{_encode(mallory)}.{mac_text}",
        f"{payload_text}.{mac_text[:-2]}AA",
        mint_token("t" * 40, "alice", 60, now=NOW),
    ):
        with pytest.raises(InvalidToken) as caught:
            verify_token(SECRET, forged, now=NOW)
        assert caught.value.reason == "bad_signature", forged
    # every refusal reads the same over HTTP: no hint about which part was wrong
    config = AccessConfig(token_secret=SECRET)
    assert denied(config, bearer(f"{_encode(longer)}.{mac_text}"), now=NOW).message == "invalid API key or token"


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        ".",
        "abc",
        "a.b.c",
        "abc.",
        ".abc",
        "ab$c.def",
        "abc.d+f",
        "é.abc",
        "x" * 3000 + ".abc",
        "a" * 5 + ".a",
    ],
)
def test_malformed_tokens_are_refused_without_a_crash(malformed):
    with pytest.raises(InvalidToken) as caught:
        verify_token(SECRET, malformed, now=NOW)
    assert caught.value.reason == "malformed"  # refused before any signature is computed


def test_a_correctly_signed_payload_without_a_client_or_expiry_is_malformed():
    for payload in (
        {"exp": int(NOW) + 60},
        {"sub": "alice"},
        {"sub": "alice", "exp": True},
        {"sub": "bad id!", "exp": int(NOW) + 60},
        {"sub": "alice", "exp": "soon"},
    ):
        text = _encode(payload)
        token = f"{text}.{access._b64encode(access._mac(SECRET, text))}"
        with pytest.raises(InvalidToken) as caught:
            verify_token(SECRET, token, now=NOW)
        assert caught.value.reason == "malformed", payload


def test_minting_checks_its_inputs():
    for args in ((SECRET, "bad id", 60), (SECRET, "alice", 0), (SECRET, "alice", float("inf")), ("short", "alice", 60)):
        with pytest.raises(ValueError):
            mint_token(*args, now=NOW)


def test_keys_and_tokens_together():
    config = AccessConfig(api_keys={"alice": ALICE_KEY}, token_secret=SECRET)
    assert authorize(config, bearer(ALICE_KEY)) == "alice"
    assert authorize(config, bearer(mint_token(SECRET, "bob", 60, now=NOW)), now=NOW) == "bob"
    assert denied(config, bearer(mint_token(SECRET, "bob", 60, now=NOW)), now=NOW + 60).status == 401


def test_the_token_command_prints_a_token_the_server_accepts(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MY_SECRET": SECRET}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "assistant.anystream_cli",
            "token",
            "--client",
            "alice",
            "--ttl",
            "120",
            "--secret-env",
            "MY_SECRET",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert verify_token(SECRET, token) == "alice"
    result = subprocess.run(
        [sys.executable, "-m", "assistant.anystream_cli", "token", "--client", "alice"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "ANYSTREAM_TOKEN_SECRET" in result.stderr and not result.stdout


# ----- browsers: origins and hosts -----


def test_without_access_only_loopback_pages_and_hosts_pass():
    config = AccessConfig()
    assert authorize(config, {}) is None and authorize(config, LOCAL) is None
    for origin in ("http://127.0.0.1:8000", "http://localhost:5173", "http://[::1]:8000", "http://localhost"):
        assert authorize(config, {"origin": origin, **LOCAL}) is None, origin
    for origin in (
        "https://evil.example",
        "http://127.0.0.1.evil.example",
        "null",
        "http://localhost.evil:80",
        "https://localhost:8000",
        "http://127.0.0.1:8000/path",
    ):
        refusal = denied(config, {"origin": origin, **LOCAL})
        assert (refusal.status, refusal.reason) == (403, "forbidden_origin"), origin
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "127.1.2.3:80"):
        assert authorize(config, {"host": host}) is None, host
    # DNS rebinding: a page whose name now resolves to 127.0.0.1 addresses its own name
    for host in ("evil.example:8000", "evil.example", "10.0.0.5:8000", "[2001:db8::1]:8000"):
        refusal = denied(config, {"host": host})
        assert (refusal.status, refusal.reason) == (403, "forbidden_host"), host


def test_allowed_origins_are_matched_exactly():
    config = AccessConfig(api_keys={"alice": ALICE_KEY}, allowed_origins=("https://app.example.com",))
    assert authorize(config, bearer(ALICE_KEY, origin="https://app.example.com")) == "alice"
    assert authorize(config, bearer(ALICE_KEY, origin="http://localhost:3000")) == "alice"
    for origin in (
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "https://app.example.com:444",
        "https://evil.example",
    ):
        refusal = denied(config, bearer(ALICE_KEY, origin=origin))
        assert refusal.reason == "forbidden_origin", origin
    # with access on the server is reached by its public name: no host rule, but the credential is still needed
    assert authorize(config, bearer(ALICE_KEY, host="gpu-box.example:8000")) == "alice"
    assert denied(config, {"origin": "https://app.example.com"}).status == 401
    anywhere = AccessConfig(api_keys={"alice": ALICE_KEY}, allowed_origins=("*",))
    assert authorize(anywhere, bearer(ALICE_KEY, origin="https://anything.example")) == "alice"
    assert denied(anywhere, {"origin": "https://anything.example"}).status == 401


def test_cors_answers_only_allowed_pages():
    config = AccessConfig(api_keys={"alice": ALICE_KEY}, allowed_origins=("https://app.example.com",))
    allowed = {"origin": "https://app.example.com"}
    assert cors_headers(config, allowed)["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert cors_headers(config, {"origin": "https://evil.example"}) == {} and cors_headers(config, {}) == {}
    answer = preflight(config, allowed)
    assert (
        "Authorization" in answer["Access-Control-Allow-Headers"] and "POST" in answer["Access-Control-Allow-Methods"]
    )
    with pytest.raises(AccessDenied) as caught:
        preflight(config, {"origin": "https://evil.example"})
    assert caught.value.status == 403


# ----- the body -----


def test_offers_must_be_declared_json():
    for content_type in ("application/json", "Application/JSON; charset=UTF-8", 'application/json;charset="utf-8"'):
        require_json({"content-type": content_type})
    for content_type in (
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json; charset=latin-1",
    ):
        headers = {} if content_type is None else {"Content-Type": content_type}
        with pytest.raises(AccessDenied) as caught:
            require_json(headers)
        assert (caught.value.status, caught.value.reason) == (415, "unsupported_media_type"), content_type


class CountingChunks:
    """An async iterator of ``count`` chunks that records how many were pulled."""

    def __init__(self, count: int, size: int):
        self.count, self.size, self.pulled = count, size, 0

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        if self.pulled >= self.count:
            raise StopAsyncIteration
        self.pulled += 1
        return b"x" * self.size


def test_read_limited_stops_as_soon_as_the_limit_is_passed():
    chunks = CountingChunks(count=1000, size=1000)
    with pytest.raises(BodyTooLarge) as caught:
        asyncio.run(read_limited(chunks, limit=10_000, declared_length=None))
    assert (caught.value.status, caught.value.reason) == (413, "too_large")
    assert chunks.pulled == 11  # the 11th chunk passed the limit; the other 989 were never asked for
    declared = CountingChunks(count=1000, size=1000)
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_limited(declared, limit=10_000, declared_length=1_000_000))
    assert declared.pulled == 0  # a declared length over the limit reads nothing
    assert asyncio.run(read_limited(CountingChunks(10, 1000), limit=10_000, declared_length=10_000)) == b"x" * 10_000


def test_declared_length_parsing():
    assert declared_length({}) is None and declared_length({"Content-Length": " 42 "}) == 42
    for bad in ("-1", "4x", "", "١٢"):  # the last: Arabic-Indic digits, which str.isdigit accepts
        with pytest.raises(AccessDenied) as caught:
            declared_length({"content-length": bad})
        assert caught.value.status == 400, bad


def test_the_module_stays_free_of_frameworks():
    code = (
        "import sys, assistant.access; "
        "print(sorted(m for m in ('torch', 'ray', 'fastapi', 'aiohttp', 'starlette') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr

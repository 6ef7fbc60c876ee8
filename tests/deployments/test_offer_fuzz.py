"""A bounded fuzz run over ``POST /offer`` through the real FastAPI app (httpx's ASGI transport, no Serve): random
bytes, deep nesting, lone surrogates, wrong types, strings under and over the limits, SDPs with extra or broken media
sections, and hostile credentials. Every answer must be a 4xx whose JSON body has ``error`` and ``reason``, never a
500; nothing may be left behind, and a real offer must still be answered afterwards."""

from __future__ import annotations

import asyncio
import json
import random
import re

import pytest
from offer_fakes import ALICE_KEY, KEYS, asgi_client, bare_gateway, offering, rejected

from assistant.access import AccessConfig
from assistant.webrtc.ice import use_loopback_only

pytestmark = pytest.mark.timeout(240)

SEED = 20240611
LIMIT = 128 * 1024  # AccessConfig's default max_body_bytes
JSON = {"content-type": "application/json"}
REASONS = {
    400: {"bad_request"},
    401: {"unauthorized"},
    403: {"forbidden_origin", "forbidden_host"},
    413: {"too_large"},
    415: {"unsupported_media_type"},
}
VIDEO_SECTION = (
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=sendrecv\r\na=rtpmap:96 VP8/90000\r\n"
)


def offer(sdp, kind="offer", **extra) -> bytes:
    return json.dumps({"sdp": sdp, "type": kind, **extra}).encode()


def random_json(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if depth > 5 or roll < 0.4:
        return rng.choice(
            [
                None,
                True,
                False,
                rng.randint(-(10**6), 10**6),
                rng.random() * 1e300,
                "",
                "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 40))),
                "offer",
                "v=0",
            ]
        )
    if roll < 0.7:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["sdp", "type", "voice", "", "x" * rng.randint(1, 50)]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def broken_sdps(sdp: str) -> dict[str, str]:
    """The client's real SDP, changed so that no answer can come of it."""
    lines = sdp.split("\r\n")
    audio_start, data_start = sdp.index("m=audio"), sdp.index("m=application")
    return {
        "extra video": sdp + VIDEO_SECTION.format(mid=2),
        "two extra videos": sdp + VIDEO_SECTION.format(mid=2) + VIDEO_SECTION.format(mid=3),
        "video first": sdp[:audio_start] + VIDEO_SECTION.format(mid=9) + sdp[audio_start:],
        "two audio sections": sdp + sdp[audio_start:data_start],
        "no data channel": sdp[:data_start],
        "no audio": sdp[:audio_start] + sdp[data_start:],
        "recvonly audio": sdp.replace("a=sendrecv", "a=recvonly"),
        "no ICE credentials": "\r\n".join(line for line in lines if not line.startswith("a=ice-ufrag")),
        "no DTLS role": "\r\n".join(line for line in lines if not line.startswith("a=setup")),
        "broken rtpmap": sdp.replace("a=rtpmap:", "a=rtpmap:x", 1),
        "port is not a number": re.sub(r"m=audio \d+", "m=audio x", sdp),
        "NUL in a line": sdp.replace("a=mid:0", "a=mid:\x000", 1),
        "lone surrogate": sdp.replace("a=mid:0", "a=mid:\ud8000", 1),
        "not v=0": "v=1" + sdp[3:],
        "thousands of lines": sdp + "a=x\r\n" * 2000,
    }


def hostile_bodies(rng: random.Random, sdp: str) -> list[tuple[str, bytes]]:
    """A few hundred bodies, each of which must be refused (none can be a usable offer)."""
    bodies: list[tuple[str, bytes]] = []
    for i in range(100):
        size = rng.choice([0, 1, 2, 10, 100, 1000, 5000])
        bodies.append((f"random bytes {i}", bytes(rng.getrandbits(8) for _ in range(size))))
    for i in range(100):
        bodies.append((f"random JSON {i}", json.dumps(random_json(rng)).encode()))
    bodies += [
        ("100,000 [", b"[" * 100_000),
        ("deep balanced list", b"[" * 5000 + b"]" * 5000),
        ("deep objects", b'{"a":' * 20_000 + b"1" + b"}" * 20_000),
        ("sdp nested 20 deep", b'{"type": "offer", "sdp": ' + b"[" * 20 + b"]" * 20 + b"}"),
        ("lone surrogate in sdp", b'{"sdp": "v=0\\ud800", "type": "offer"}'),
        ("lone surrogate in a key", b'{"\\udfff": 1, "sdp": "v=0", "type": "offer"}'),
        ("surrogate pair halves swapped", b'{"sdp": "v=0\\udc00\\ud800", "type": "offer"}'),
        ("UTF-8 encoded surrogate", b'{"sdp": "v=0\xed\xa0\x80", "type": "offer"}'),
        ("UTF-16 body", offer(sdp).decode().encode("utf-16")),
        ("latin-1 body", '{"sdp": "v=0 é", "type": "offer"}'.encode("latin-1")),
        ("BOM then JSON", b"\xef\xbb\xbf" + b'{"sdp": "v=0", "type": "offer"}'),
        ("a 5000-digit number", b'{"sdp": ' + b"9" * 5000 + b', "type": "offer"}'),
        ("infinity", b'{"sdp": 1e999999, "type": "offer"}'),
        ("NaN", b'{"sdp": NaN, "type": "offer"}'),
        ("duplicate keys, the last wrong", b'{"sdp": ' + json.dumps(sdp).encode() + b', "sdp": 1, "type": "offer"}'),
        ("empty object", b"{}"),
        ("just a string", json.dumps(sdp).encode()),
        ("trailing garbage", offer(sdp) + b"}"),
        ("sdp under the body limit, over the SDP limit", offer("v=0\r\n" + "a" * 70_000)),
        ("sdp just under the SDP limit", offer("v=0\r\n" + "a" * 60_000)),
        ("body at the limit", b'{"sdp": "' + b"v" * (LIMIT - 12) + b'"}'),
        ("body just over the limit", b'{"sdp": "' + b"v" * (LIMIT - 10) + b'"}'),
        ("body of 1 MiB", b'{"sdp": "' + b"v" * (1 << 20) + b'"}'),
        ("voice too long", offer(sdp, voice="v" * 33)),
        ("voice not a name", offer(sdp, voice="Bad Name")),
        ("voice a number", offer(sdp, voice=7)),
        ("voice with NUL", offer(sdp, voice="a\x00")),
        ("type answer", offer(sdp, "answer")),
        ("type OFFER", offer(sdp, "OFFER")),
        ("type missing", json.dumps({"sdp": sdp}).encode()),
        ("sdp missing", json.dumps({"type": "offer"}).encode()),
        ("sdp blank", offer("   \r\n")),
    ]
    for value in (None, 1, 1.5, True, [], {}, [sdp], {"v": 0}):
        bodies.append((f"sdp is {type(value).__name__} {value!r:.20}", offer(value)))
    for value in (None, 1, ["offer"], {"offer": 1}, ""):
        bodies.append((f"type is {value!r}", offer(sdp, value)))
    for name, broken in broken_sdps(sdp).items():
        bodies.append((f"SDP: {name}", offer(broken)))
    for i in range(30):  # the real offer with one byte of '{"sdp":' replaced: never a usable offer
        raw = bytearray(offer(sdp))
        position = rng.randrange(7)
        raw[position] = rng.choice([b for b in range(256) if b != raw[position]])
        bodies.append((f"structure byte {position} flipped ({i})", bytes(raw)))
    return bodies


def assert_refusal(name: str, response) -> None:
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error", "reason"}, (name, body)
    assert body["reason"] in REASONS[response.status_code], (name, response.status_code, body)
    assert isinstance(body["error"], str) and 0 < len(body["error"]) <= 500, (name, body)


def test_hostile_offers_are_4xx_and_leave_nothing_behind():
    async def main():
        gw = bare_gateway()
        async with offering(gw) as sdp:
            bodies = hostile_bodies(random.Random(SEED), sdp)
            assert len(bodies) >= 280
            async with asgi_client(gw) as http:
                for name, body in bodies:
                    assert_refusal(name, await http.post("/offer", content=body, headers=JSON))
                assert len(gw.sessions) == 0 and all(s.closed for s in gw.engine.sessions)
                counts = rejected(gw.serving_metrics)
                assert sum(counts.values()) == len(bodies) and counts.get("too_large") == 2
                # the same server still answers a real offer
                response = await http.post("/offer", content=offer(sdp), headers=JSON)
                assert response.status_code == 200 and response.json()["type"] == "answer"
                assert len(gw.sessions) == 1

    asyncio.run(main())


def test_hostile_credentials_and_origins_are_4xx():
    async def main():
        rng = random.Random(SEED + 1)
        gw = bare_gateway(
            AccessConfig(api_keys=KEYS, token_secret="s" * 40, allowed_origins=("https://app.example.com",))
        )
        async with offering(gw) as sdp:
            values = [bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 30, 200, 5000]))) for _ in range(60)]
            values += [b"Bearer " + v for v in values[:30]]
            values += [
                b"Bearer "
                + b".".join(
                    bytes(rng.choice(b"AZaz09-_=+/") for _ in range(rng.randint(0, 60)))
                    for _ in range(rng.randint(1, 4))
                )
                for _ in range(40)
            ]
            values += [
                b"Bearer " + ALICE_KEY.encode()[:-1],
                b"Bearer " + ALICE_KEY.encode() + b"\x00",
                b"Bearer",
                b"bearer\t" + ALICE_KEY.encode() + b"x",
                b"Basic " + ALICE_KEY.encode(),
            ]
            async with asgi_client(gw) as http:
                for value in values:
                    response = await http.post("/offer", content=offer(sdp), headers={**JSON, "authorization": value})
                    assert_refusal(repr(value[:40]), response)
                    assert response.status_code == 401, value[:40]
                for _ in range(40):
                    origin = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80)))
                    headers = {**JSON, "authorization": f"Bearer {ALICE_KEY}", "origin": origin}
                    response = await http.post("/offer", content=offer(sdp), headers=headers)
                    assert_refusal(repr(origin[:40]), response)
                assert len(gw.sessions) == 0
                response = await http.post(
                    "/offer", content=offer(sdp), headers={**JSON, "authorization": f"Bearer {ALICE_KEY}"}
                )
                assert response.status_code == 200 and len(gw.sessions) == 1

    asyncio.run(main())


@pytest.mark.slow  # hypothesis: > 1.5 s
def test_arbitrary_bodies_found_by_hypothesis_are_4xx():
    import hypothesis
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=50)
        | st.sampled_from(["offer", "answer", "v=0", "v=0\r\nm=audio 9 x\r\nm=application 9 y\r\n"])
    )
    trees = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.sampled_from(["sdp", "type", "voice"]) | st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
    bodies = st.binary(max_size=2048) | trees.map(lambda tree: json.dumps(tree).encode())
    gw = bare_gateway()

    @hypothesis.settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @hypothesis.given(body=bodies)
    def check(body: bytes) -> None:
        async def post():
            async with asgi_client(gw) as http:
                return await http.post("/offer", content=body, headers=JSON)

        assert_refusal(repr(body[:60]), asyncio.run(post()))

    use_loopback_only()
    check()
    assert len(gw.sessions) == 0

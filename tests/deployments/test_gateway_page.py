"""The browser page over HTTP, through the real FastAPI app (httpx's ASGI transport, no Serve): ``GET /`` and
``GET /static/{name}`` with their content types and security headers, unknown names refused, the same Origin and
Host rules as the other routes but no credential, and the page's own origin allowed to call ``/offer`` with access
on and off. The page itself in a browser: tests/web/test_browser_page.py."""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from offer_fakes import ALICE_KEY, KEYS, asgi_client, bare_gateway, offering

import assistant.web
from assistant.access import AccessConfig, check_browser
from assistant.access import AccessDenied as Denied

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
JSON = {"content-type": "application/json"}
ASSETS = {
    "/": "text/html",
    "/static/app.js": "text/javascript",
    "/static/fragments.js": "text/javascript",
    "/static/style.css": "text/css",
}


def offer_body(sdp: str) -> bytes:
    return json.dumps({"sdp": sdp, "type": "offer"}).encode()


def test_the_page_and_its_assets_are_served_with_their_types_and_a_strict_policy():
    async def main():
        async with asgi_client(bare_gateway()) as http:
            for path, content_type in ASSETS.items():
                response = await http.get(path)
                assert response.status_code == 200, (path, response.text)
                assert response.headers["content-type"].split(";")[0] == content_type
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-content-type-options"] == "nosniff"
                policy = dict(
                    part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";")
                )
                assert policy["default-src"] == "'none'"
                assert policy["script-src"] == "'self'" and policy["connect-src"] == "'self'"
                assert policy["img-src"] == "'self' blob: data:"
                assert policy["media-src"] == "'self' mediastream: blob:"
                # nothing from anywhere else: no host names in the policy
                assert not re.search(r"https?:", response.headers["content-security-policy"])
            page = (await http.get("/")).text
            assert '<script type="module" src="/static/app.js">' in page

    asyncio.run(main())


def test_everything_the_page_loads_is_one_of_its_assets():
    page, _ = assistant.web.read_asset(assistant.web.INDEX)
    app, _ = assistant.web.read_asset("app.js")
    referenced = set(re.findall(r'(?:src|href)="([^"]+)"', page.decode())) - {"data:,"}  # no favicon request
    referenced |= {"/static/" + name for name in re.findall(r'from "\./([^"]+)"', app.decode())}
    assert referenced == {"/static/style.css", "/static/app.js", "/static/fragments.js"}
    for url in referenced:
        assert url.removeprefix("/static/") in assistant.web.CONTENT_TYPES
    # nothing from the network: no absolute URLs in any asset
    for name in assistant.web.CONTENT_TYPES:
        text = assistant.web.read_asset(name)[0].decode()
        assert not re.search(r"(src|href|url)\s*[=(]\s*[\"']?(https?:)?//", text), name


def test_unknown_names_are_refused_without_touching_the_file_system():
    for name in ("__init__.py", "../access.py", "", "index.html/", "APP.JS"):
        with pytest.raises(assistant.web.UnknownAsset):
            assistant.web.read_asset(name)

    async def main():
        async with asgi_client(bare_gateway()) as http:
            for path in ("/static/__init__.py", "/static/missing.js", "/static/index.htm"):
                response = await http.get(path)
                assert response.status_code == 404 and response.json()["reason"] == "not_found", path
            # a name with a '/' (here an encoded one) matches no GET route at all
            response = await http.get("/static/..%2F__init__.py")
            assert response.status_code == 405 and "import" not in response.text

    asyncio.run(main())


def test_the_package_ships_every_asset():
    """setuptools' package-data must match each asset, or an installed (non-editable) server answers 404."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["assistant"]
    for name in assistant.web.CONTENT_TYPES:
        assert any(fnmatch(f"web/{name}", pattern) for pattern in patterns), name
    shipped = {p.name for p in (ROOT / "assistant" / "web").iterdir() if p.suffix in (".html", ".js", ".css")}
    assert shipped == set(assistant.web.CONTENT_TYPES)


def test_the_page_follows_the_host_and_origin_rules_but_needs_no_key():
    async def main():
        # access off: only requests addressed to this machine, as for every other route
        async with asgi_client(bare_gateway(), host="rebound.evil.example:8000") as http:
            for path in ASSETS:
                response = await http.get(path)
                assert response.status_code == 403 and response.json()["reason"] == "forbidden_host", path
        async with asgi_client(bare_gateway()) as http:
            response = await http.get("/static/app.js", headers={"origin": "https://evil.example"})
            assert response.status_code == 403 and response.json()["reason"] == "forbidden_origin"

        # access on: the page is served to anyone who reaches the server by any name, without a key; the rest of
        # the API still needs one
        gw = bare_gateway(AccessConfig(api_keys=KEYS))
        async with asgi_client(gw, host="assistant.example.com") as http:
            for path in ASSETS:
                assert (await http.get(path)).status_code == 200, path
            assert (await http.get("/voices")).status_code == 401
            assert (await http.get("/voices", headers={"authorization": f"Bearer {ALICE_KEY}"})).status_code == 200

    asyncio.run(main())


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("https://assistant.example.com", "assistant.example.com", True),
        ("https://assistant.example.com", "assistant.example.com:443", True),
        ("http://assistant.example.com:8000", "assistant.example.com:8000", True),
        ("http://ASSISTANT.example.com:8000", "assistant.example.COM:8000", True),
        ("http://assistant.example.com:8000", "assistant.example.com:8001", False),
        ("https://assistant.example.com.evil.example", "assistant.example.com", False),
        ("https://evil.example", "assistant.example.com", False),
        ("null", "assistant.example.com", False),
        ("https://assistant.example.com/path", "assistant.example.com", False),
    ],
)
def test_a_page_may_call_the_server_that_served_it(origin, host, allowed):
    config = AccessConfig(api_keys=KEYS)
    headers = {"origin": origin, "host": host}
    if allowed:
        check_browser(config, headers)
    else:
        with pytest.raises(Denied) as refused:
            check_browser(config, headers)
        assert refused.value.reason == "forbidden_origin"


def test_the_pages_own_origin_gets_a_session_with_access_on_and_off():
    """A browser sends Origin with every POST, also to the page's own server: /offer must accept its own page."""

    async def main():
        gw = bare_gateway()
        async with offering(gw) as sdp:
            async with asgi_client(gw, host="127.0.0.1:8000") as http:
                own = {**JSON, "origin": "http://127.0.0.1:8000"}
                response = await http.post("/offer", content=offer_body(sdp), headers=own)
                assert response.status_code == 200, response.text
        gw = bare_gateway(AccessConfig(api_keys=KEYS))
        async with offering(gw) as sdp:
            async with asgi_client(gw, host="assistant.example.com") as http:
                own = {**JSON, "origin": "https://assistant.example.com"}
                response = await http.post("/offer", content=offer_body(sdp), headers=own)
                assert response.status_code == 401  # the page's origin is not a credential
                keyed = {**own, "authorization": f"Bearer {ALICE_KEY}"}
                response = await http.post("/offer", content=offer_body(sdp), headers=keyed)
                assert response.status_code == 200, response.text
                assert gw.sessions.get(response.json()["session_id"]).client_id == "alice"
                other = {**keyed, "origin": "https://other.example.com"}
                response = await http.post("/offer", content=offer_body(sdp), headers=other)
                assert response.status_code == 403 and response.json()["reason"] == "forbidden_origin"

    asyncio.run(main())

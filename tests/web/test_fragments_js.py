"""The page's fragment code (``assistant/web/fragments.js``) in headless Chromium against the server's
(``assistant/fragments.py``): messages split in the page are put back together by Python and the other way round,
at the 64 KiB a peer may assume and at a small limit that cuts through quotes, escapes and surrogate pairs; the page's
bounds (size, order, an abandoned message) hold. No server: Playwright answers the page's requests from
:func:`assistant.web.read_asset`."""

from __future__ import annotations

import base64
import json
import random
from urllib.parse import urlparse

import pytest
from browser_session import chromium_page

import assistant.web
from assistant import fragments
from assistant.protocol import MAX_UPLOAD_MESSAGE_BYTES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ORIGIN = "http://page.test"
# Every kind of character a JSON string treats differently: quotes and backslashes (escaped), control characters
# (\n and \u0001), two- and three-byte UTF-8, and characters outside the BMP (a surrogate pair in JavaScript).
TRICKY = 'naïve “curly” "straight" \\back\\slash\n\ttab \u0001 日本語 😀🎵 '


def serve_assets(page) -> None:
    def answer(route) -> None:
        path = urlparse(route.request.url).path
        if path == "/blank":
            route.fulfill(status=200, body="<!doctype html><title>blank</title>", content_type="text/html")
            return
        try:
            body, content_type = assistant.web.read_asset(path.removeprefix("/static/"))
        except assistant.web.UnknownAsset:
            route.fulfill(status=404, body="")
            return
        route.fulfill(status=200, body=body, headers={"content-type": content_type, **assistant.web.PAGE_HEADERS})

    page.route(f"{ORIGIN}/**", answer)
    page.goto(f"{ORIGIN}/blank")


def message_text(payload_bytes: int) -> str:
    picture = base64.b64encode(random.Random(7).randbytes(payload_bytes)).decode("ascii")
    return json.dumps({"type": "image", "png_base64": picture, "text": TRICKY * 40}, ensure_ascii=False)


def test_the_page_and_the_server_read_each_others_fragments(tmp_path):
    with chromium_page(tmp_path / "profile") as (page, console):
        serve_assets(page)
        for limit, payload in ((65536, 300_000), (1000, 20_000)):
            text = message_text(payload)
            parts = page.evaluate(
                """async ([text, limit]) => {
                    const m = await import("/static/fragments.js");
                    return m.splitMessage(text, limit);
                }""",
                [text, limit],
            )
            assert len(parts) >= 2
            assert all(len(part.encode("utf-8")) <= limit for part in parts)
            ids = {json.loads(part)["id"] for part in parts}
            assert len(ids) == 1
            reassembler = fragments.Reassembler(MAX_UPLOAD_MESSAGE_BYTES)
            results = [reassembler.push(part) for part in parts]
            assert results[:-1] == [None] * (len(parts) - 1) and results[-1] == text, limit

            from_python = fragments.split_message(text, limit)
            assert len(from_python) >= 2
            rebuilt = page.evaluate(
                """async (parts) => {
                    const m = await import("/static/fragments.js");
                    const reassembler = new m.Reassembler();
                    const results = parts.map((part) => reassembler.push(part));
                    return {pending: results.slice(0, -1).filter((r) => r !== null).length, last: results.at(-1)};
                }""",
                from_python,
            )
            assert rebuilt == {"pending": 0, "last": json.loads(text)}, limit

        small = json.dumps({"type": "text", "text": TRICKY})
        assert page.evaluate(
            "async (text) => (await import('/static/fragments.js')).splitMessage(text, 65536)", small
        ) == [small]
        assert not console, console


def test_the_page_bounds_what_it_reassembles(tmp_path):
    with chromium_page(tmp_path / "profile") as (page, console):
        serve_assets(page)
        outcome = page.evaluate(
            """async () => {
                const m = await import("/static/fragments.js");
                const message = (letter, n) => JSON.stringify({type: "text", text: letter.repeat(n)});
                const errorOf = (fn) => {
                    try { fn(); return null; }
                    catch (e) { return e instanceof m.FragmentError ? "fragment" : String(e); }
                };
                const out = {};

                // larger than the bound: one error, and the rest of that message is dropped quietly
                const small = new m.Reassembler({maxBytes: 500});
                const big = m.splitMessage(message("x", 2000), 300, "big");
                out.tooLarge = big.map((part) => errorOf(() => small.push(part))).filter((e) => e !== null);
                out.afterTooLarge = small.push(message("y", 3));

                // a new message before the last one is complete: the old one is abandoned, the new one completes
                const abandoned = [];
                const reassembler = new m.Reassembler({onAbandon: (why) => abandoned.push(why)});
                const first = m.splitMessage(message("a", 900), 300, "first");
                const second = m.splitMessage(message("b", 900), 300, "second");
                reassembler.push(first[0]);
                let result = null;
                for (const part of second) result = reassembler.push(part);
                out.second = result.text.length;
                out.abandoned = abandoned.length;
                out.straggler = reassembler.push(first[1]);

                // out of order, and a message that starts in its middle
                const third = m.splitMessage(message("c", 900), 300, "third");
                reassembler.push(third[0]);
                out.outOfOrder = errorOf(() => reassembler.push(third[2]));
                out.pendingAfterOutOfOrder = reassembler.pending;
                out.middle = errorOf(() => reassembler.push(m.splitMessage(message("d", 900), 300, "fourth")[1]));
                out.malformed = errorOf(() => reassembler.push(JSON.stringify({type: "fragment", id: "bad id!",
                    index: 0, count: 2, data: ""})));

                out.limits = [m.sendLimit(0), m.sendLimit(undefined), m.sendLimit(262144), m.sendLimit(16384)];
                return out;
            }"""
        )
        assert outcome["tooLarge"] == ["fragment"]
        assert outcome["afterTooLarge"] == {"type": "text", "text": "yyy"}
        assert outcome["second"] == 900 and outcome["abandoned"] == 1 and outcome["straggler"] is None
        assert outcome["outOfOrder"] == "fragment" and outcome["pendingAfterOutOfOrder"] is False
        assert outcome["middle"] == "fragment" and outcome["malformed"] == "fragment"
        assert outcome["limits"] == [65536, 65536, 65536, 16384]
        assert not console, console

"""Setting up the call: the SDP offer goes to ``POST {server}/offer``, the server's answer comes back.

Every way this can fail becomes a :class:`SignallingError` whose text is the one line the user reads: the server
unreachable, the offer refused (with the server's own words and, for 401/429, what to do about it), an answer that
is not ``{sdp, type}`` JSON, or one aiortc cannot apply.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from assistant.protocol import OfferRequest

# What the caller can do about a refusal (the server's own text comes first).
REFUSAL_HINTS = {
    401: " (give an API key or token: --api-key, or the ANYSTREAM_API_KEY environment variable)",
    429: " (this key already holds as many sessions as the server allows; end one first)",
}


class SignallingError(RuntimeError):
    """The call could not be set up; ``str()`` says why, for the user. ``status``: the server's HTTP status when it
    refused the offer (None: it was not reached, or its answer was unusable)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status

    @property
    def permanent(self) -> bool:
        """Trying again cannot help: the server refused this offer for what it is (bad request, no access)."""
        return self.status is not None and 400 <= self.status < 500 and self.status != 429


async def negotiate(
    pc: RTCPeerConnection,
    server_url: str,
    *,
    voice: str | None = None,
    api_key: str | None = None,
    timeout: float = 15.0,
    resume: str | None = None,
) -> str | None:
    """Offers ``pc``'s media to the server and applies its answer; returns the session id (None if it gave none).
    ``resume``: the resume token of the conversation to continue (from the last ``ready``)."""
    await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers ICE candidates here
    offer = OfferRequest(sdp=pc.localDescription.sdp, type=pc.localDescription.type, voice=voice, resume=resume)
    answer = await post_offer(f"{server_url}/offer", offer, api_key=api_key, timeout=timeout)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    except Exception as exc:
        raise SignallingError(f"the server's answer could not be applied: {exc}") from exc
    session_id = answer.get("session_id")
    return session_id if isinstance(session_id, str) else None


async def post_offer(url: str, offer: OfferRequest, *, api_key: str | None, timeout: float) -> dict[str, Any]:
    """The HTTP exchange: the server's answer as a dict with at least ``sdp`` and ``type``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.post(url, json=offer.to_dict(), headers=headers) as resp:
                status, text = resp.status, await resp.text()
    except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.InvalidURL, OSError) as exc:
        raise SignallingError(f"cannot reach the server at {url}: {exc or type(exc).__name__}") from exc
    if status != 200:
        hint = REFUSAL_HINTS.get(status, "")
        raise SignallingError(f"the server rejected the offer (HTTP {status}): {error_detail(text)}{hint}", status)
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not (isinstance(answer, dict) and "sdp" in answer and "type" in answer):
        raise SignallingError(f"the server sent an answer that is not {{sdp, type}} JSON: {text[:200]!r}")
    return answer


def error_detail(body: str) -> str:
    """The server's ``{"error": ...}`` text, or the start of whatever else it sent."""
    try:
        obj = json.loads(body)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return obj["error"]
    except ValueError:
        pass
    return body.strip()[:200] or "(empty body)"

"""The HTTP ingress: WebRTC signalling (``POST /offer``), the voice list (``GET /voices``) and health, hosting every
peer connection.

``POST /offer`` takes ``{"sdp", "type": "offer", "voice"?}`` (:class:`assistant.protocol.OfferRequest`); a malformed
offer or an unknown voice is a 400 with ``{"error": ...}`` and leaves no session behind.

Each session's peer connection and engine session live in this replica's event loop; the engine reaches the
model deployments through DeploymentHandles (:mod:`deployments.backends`). Follow-up requests for a session
(``DELETE /sessions/{id}``) must reach the same replica, so run one gateway replica (or route by session).
"""


import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from assistant.endpointing import EndpointerConfig
from assistant.models.voices import VoiceBank
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.protocol import OfferRequest, ProtocolError
from assistant.vocab import UnifiedVocab
from assistant.webrtc.session import RtcSessionManager, SessionLimitError
from deployments.backends import ray_backends
from deployments.common import FAST_SHUTDOWN, ModelSpec

logger = logging.getLogger(__name__)

api = FastAPI(title="anystream gateway")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment(**FAST_SHUTDOWN)
@serve.ingress(api)
class Gateway:
    def __init__(
        self,
        speech: DeploymentHandle,
        lm: DeploymentHandle,
        acoustic: DeploymentHandle,
        media: DeploymentHandle,
        model: dict | None = None,
        loopback_only: bool = True,
        max_sessions: int = 8,
        engine: dict | None = None,
        endpointer: dict | None = None,
    ):
        if loopback_only:
            from assistant.webrtc.ice import use_loopback_only

            use_loopback_only()
        spec = ModelSpec.from_dict(model)
        vocab = UnifiedVocab.from_dir(spec.tokenizer_dir)
        config = EngineConfig(**(engine or {}))
        self._model_handles = (speech, lm, acoustic, media)
        self._models_ready = False
        # The voices of spoken replies (embedded: ``voices.json`` made by training); none = one voice.
        voices_path = spec.voices_path
        voices = VoiceBank.from_json(voices_path) if voices_path is not None and voices_path.is_file() else None
        self.engine = AssistantEngine(ray_backends(speech, lm, acoustic, media), vocab, config, voices=voices)
        self.sessions = RtcSessionManager(
            self.engine.new_session,
            max_sessions=max_sessions,
            endpointer_config=EndpointerConfig(**(endpointer or {})),
            voices=self.engine.voices,
            turn_factory=UserTurn,
        )

    @api.post("/offer")
    async def offer(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"body is not valid JSON: {exc}")
        try:
            offer = OfferRequest.parse(body)
            _, answer = await self.sessions.create(offer)
        except ProtocolError as exc:
            return _error(400, str(exc))
        except SessionLimitError as exc:
            return _error(503, str(exc))
        except Exception as exc:  # a bug must not take the ingress down; the caller gets a 500 it can read
            logger.exception("offer failed")
            return _error(500, f"cannot create a session: {exc}")
        return answer.to_dict()

    @api.get("/health")
    async def health(self) -> Any:
        if not self._models_ready:
            # The gateway starts long before the model replicas have loaded; until each answers, a turn would stall.
            try:
                await asyncio.wait_for(asyncio.gather(*(h.ready.remote() for h in self._model_handles)), timeout=2.0)
                self._models_ready = True
            except Exception:  # noqa: BLE001 - timeout or a replica still starting: not ready yet
                return JSONResponse({"status": "starting", "sessions": len(self.sessions)}, status_code=503)
        return {"status": "ok", "sessions": len(self.sessions)}

    @api.get("/voices")
    async def voices(self) -> Any:
        """The voices an offer may ask for; ``{"voices": [], "default": null}`` when the models have no voice bank."""
        bank = self.engine.voices
        if bank is None:
            return {"voices": [], "default": None}
        return {"voices": list(bank.names), "default": bank.default}

    @api.delete("/sessions/{session_id}")
    async def close_session(self, session_id: str) -> Any:
        if not await self.sessions.close(session_id):
            return _error(404, f"no session {session_id!r} on this replica")
        return {"closed": session_id}

    async def __del__(self):
        await self.sessions.close_all()

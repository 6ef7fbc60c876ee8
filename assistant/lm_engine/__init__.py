"""Continuous batching for the unified LM: a scheduler, a slot-based model runner and the engine loop over them."""

from assistant.lm_engine.engine import GenerationRequest, LMEngine, LMEngineConfig
from assistant.lm_engine.scheduler import BusyError

__all__ = ["BusyError", "GenerationRequest", "LMEngine", "LMEngineConfig"]

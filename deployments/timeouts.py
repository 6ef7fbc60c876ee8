"""How long a model replica may take per call (the app's ``call_timeouts``). Ray-free, so the app's config can be
checked before Ray is imported (Ray reads its node address once, at import: ``deployments.app``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CallTimeouts:
    """Seconds a replica may take to answer one call; past that the call is cancelled and the turn fails with
    "unavailable". The defaults fit the embedded models on CPU, with room for a replica that is busy with other
    sessions (the slowest calls there take well under a second); GPU deployments may set them tighter.

    encode_s: one utterance through the speech tokenizer (batched with others for up to its batch wait).
    lm_first_chunk_s: the LM's first chunk of a reply: a wait for a slot, the prompt's prefill, one step. Also bounds
        the one ``limits`` call.
    lm_next_chunk_s: every later chunk, counted from the moment the engine asks for it (a consumer that is slow,
        e.g. backpressured by the acoustic decoder, does not count against the LM).
    acoustic_s: one speech chunk decoded (or a voice registered).
    media_s: one picture drawn or read, or one piece of music rendered (the slowest models).
    """

    encode_s: float = 10.0
    lm_first_chunk_s: float = 20.0
    lm_next_chunk_s: float = 10.0
    acoustic_s: float = 10.0
    media_s: float = 30.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value}")

"""What every deployment shares: fast graceful shutdown, the readiness probe, the replica's name in its stats, and
how a caller cancels a call to one (``cancel_call``).

Model code and model loading live in ``assistant/`` (:mod:`assistant.models.loading`); a deployment loads its
role's in-process backend with ``load_role`` and forwards calls to it. ``ModelSpec`` travels to replicas as a plain
dict (it pickles without pydantic).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve import Deployment

log = logging.getLogger(__name__)

# Serve's defaults (2 s wait loop, 20 s timeout) make every shutdown take seconds; replicas here hold no
# work worth waiting for beyond half a second. A deployment that streams replies sets a longer
# graceful_shutdown_timeout_s in its config, so a replica that is scaled down drains first.
FAST_SHUTDOWN: dict[str, Any] = {"graceful_shutdown_wait_loop_s": 0.1, "graceful_shutdown_timeout_s": 0.5}


class ReadinessProbe:
    """Mixed into every model deployment: a call that succeeds once a replica has loaded its models. The gateway's
    /health waits on it, so "ok" means a turn will not stall on a deployment that is still starting."""

    async def ready(self) -> bool:
        return True


def as_deployment(decorated: object) -> Deployment:
    """A ``@serve.deployment`` class as the ``Deployment`` it is at run time (type checkers see the plain class);
    raises ``TypeError`` for a class that was never decorated."""
    from ray.serve import Deployment

    if not isinstance(decorated, Deployment):
        raise TypeError(f"{decorated!r} is not a Serve deployment (missing @serve.deployment?)")
    return decorated


def replica_name() -> str:
    """This replica's id (the ``replica`` label of its metrics), or "" outside a Serve replica."""
    from ray import serve

    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return ""


def cancel_call(call: object, what: str) -> None:
    """Best effort, for a call to a deployment that timed out or was given up: a Serve ``DeploymentResponse`` /
    ``-Generator`` stops the replica's work; a plain awaitable has nothing to stop (a coroutine was already
    cancelled with the task that awaited it). ``what`` names the call in the debug line of a failed cancel."""
    cancel = getattr(call, "cancel", None)
    if callable(cancel):
        try:
            cancel()
        except Exception:
            log.debug("cancelling %s failed", what, exc_info=True)

"""Autoscaling driven by each deployment's own load signal (Ray Serve custom autoscaling policy).

Ray Serve's default policy counts ongoing requests; that is the wrong signal here. An LM replica's load is how many
of its KV slots are taken (a session holds one for a whole reply, a streaming request that Serve counts as 1 whether
the replica has 1 or 64 slots), and an acoustic replica's is how many chunks wait for its batcher. Each such replica
reports its signal through ``record_autoscaling_stats`` (``{"load": ...}``, in units of work currently held), and
this policy sizes the deployment so every replica carries about ``target_per_replica`` of it:

    desired = ceil(total load / target_per_replica), within [min_replicas, max_replicas]

Serve applies the deployment's ``upscale_delay_s`` / ``downscale_delay_s`` around a custom policy (a change happens
once it has been asked for that long), so a burst does not thrash replicas. A replica
that goes drains first: Serve stops routing to it and waits up to ``graceful_shutdown_timeout_s`` for its ongoing
requests (the LM deployment sets that long enough for a reply to finish).

Configured in a YAML as::

    autoscaling_config:
      min_replicas: 1
      max_replicas: 4
      upscale_delay_s: 2
      downscale_delay_s: 30
      policy:
        policy_function: deployments.autoscaling:LoadSignalPolicy
        policy_kwargs: {target_per_replica: 6}
"""

from __future__ import annotations

import math
from typing import Any

LOAD_METRIC = "load"


class LoadSignalPolicy:
    def __init__(self, target_per_replica: float, metric: str = LOAD_METRIC) -> None:
        if target_per_replica <= 0:
            raise ValueError(f"target_per_replica must be > 0, got {target_per_replica}")
        self.target_per_replica = float(target_per_replica)
        self.metric = metric

    def total_load(self, ctx: Any) -> float | None:
        """The signal summed over the running replicas (None until any replica has reported it)."""
        metrics = ctx.aggregated_metrics or {}
        per_replica = metrics.get(self.metric)
        if not per_replica:
            return None
        return float(sum(per_replica.values()))

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """The replicas this load calls for now. Serve wraps custom policies with its own delay logic (a change
        happens once the policy has asked for it for ``upscale_delay_s`` / ``downscale_delay_s``), scaling factors
        and replica bounds, so the policy itself states only the target."""
        state = dict(ctx.policy_state or {})
        low, high = int(ctx.capacity_adjusted_min_replicas), int(ctx.capacity_adjusted_max_replicas)
        load = self.total_load(ctx)
        if load is None:  # no replica has reported yet: keep what there is
            return max(low, min(high, int(ctx.target_num_replicas))), state
        return max(low, min(high, math.ceil(load / self.target_per_replica))), state

"""The load-signal autoscaling policy on hand-made contexts (no Ray): ramp up, hold, fall after the delay."""

from types import SimpleNamespace

import pytest

from deployments.autoscaling import LoadSignalPolicy


def ctx(load_per_replica, target, low=1, high=4):
    metrics = {"load": {f"r{i}": v for i, v in enumerate(load_per_replica)}} if load_per_replica is not None else {}
    return SimpleNamespace(
        aggregated_metrics=metrics,
        target_num_replicas=target,
        capacity_adjusted_min_replicas=low,
        capacity_adjusted_max_replicas=high,
        policy_state={"mine": 1},
    )


def test_the_target_follows_the_load_within_the_bounds():
    policy = LoadSignalPolicy(target_per_replica=4)
    assert policy(ctx([7], 1))[0] == 2  # 7 slots taken: two replicas of 4
    assert policy(ctx([8], 1))[0] == 2
    assert policy(ctx([30, 30], 2))[0] == 4  # the maximum caps it
    assert policy(ctx([0, 1, 0, 0], 4))[0] == 1
    assert policy(ctx([0, 0], 2))[0] == 1  # never below the minimum
    assert policy(ctx([0, 0], 2, low=0))[0] == 0
    assert policy(ctx([3, 4], 2))[1] == {"mine": 1}  # Serve's state (its delay counters) passes through


def test_no_signal_keeps_the_count_and_the_target_must_be_positive():
    policy = LoadSignalPolicy(target_per_replica=4)
    assert policy(ctx(None, 3))[0] == 3
    assert policy(ctx(None, 9))[0] == 4
    with pytest.raises(ValueError):
        LoadSignalPolicy(target_per_replica=0)


def test_serves_wrapper_applies_the_delays_around_it():
    """Serve 2.60 wraps custom policies with its own delay logic: the policy's target takes effect only after
    upscale_delay_s / downscale_delay_s of asking (checked against Ray's own wrapper, so a Ray upgrade that drops it
    fails here)."""
    from ray.serve.autoscaling_policy import _apply_autoscaling_config
    from ray.serve.config import AutoscalingConfig

    wrapped = _apply_autoscaling_config(LoadSignalPolicy(target_per_replica=1))
    config = AutoscalingConfig(min_replicas=1, max_replicas=4, upscale_delay_s=0, downscale_delay_s=3600)
    state = {}

    def decide(load, target):
        nonlocal state
        context = SimpleNamespace(
            aggregated_metrics={"load": {"r": load}},
            target_num_replicas=target,
            current_num_replicas=target,
            capacity_adjusted_min_replicas=1,
            capacity_adjusted_max_replicas=4,
            policy_state=state,
            config=config,
            total_num_requests=load,
        )
        replicas, state = wrapped(context)
        return replicas

    assert decide(3, 1) == 3  # no upscale delay
    assert decide(0, 3) == 3  # an hour of downscale delay has not passed


@pytest.mark.parametrize("name", ["embedded", "anygpt-gpu"])
def test_the_configs_lm_autoscaling_uses_the_load_signal_policy(name):
    from pathlib import Path

    from ray.serve.config import AutoscalingConfig

    from deployments.app import load_config

    path = Path(__file__).resolve().parents[2] / "deployments" / "configs" / f"{name}.yaml"
    args = load_config(path).args
    config = AutoscalingConfig(**args.lm.autoscaling_config)  # what Serve validates when it deploys
    policy = config.policy
    assert policy.policy_function == "deployments.autoscaling:LoadSignalPolicy"
    built = LoadSignalPolicy(**policy.policy_kwargs)
    assert built.target_per_replica <= args.lm_batching["max_slots"]
    assert args.lm.graceful_shutdown_timeout_s >= 10  # a scaled-down replica drains its replies
    if args.acoustic.autoscaling_config is not None:  # the acoustic deployment scales on its queue, too
        acoustic = AutoscalingConfig(**args.acoustic.autoscaling_config).policy
        assert acoustic.policy_function == "deployments.autoscaling:LoadSignalPolicy"
        assert args.acoustic.graceful_shutdown_timeout_s > 0

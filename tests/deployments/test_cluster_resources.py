"""Where ``anystream-serve`` runs Ray: resources from the config (no fixed CPU count), a cluster joined by address,
and a local cluster kept on 127.0.0.1. Pure functions, no Ray started (but for the one slow binding test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments import app
from deployments.app import (
    DEFAULT_CONFIG,
    DEPLOYMENTS,
    AppArgs,
    RaySettings,
    ServeSettings,
    cluster_resources,
    gpus_to_place,
    load_config,
    replica_asks,
)

CONFIGS = {"embedded": DEFAULT_CONFIG, "anygpt-gpu": DEFAULT_CONFIG.parent / "anygpt-gpu.yaml"}
ROOT = Path(__file__).resolve().parents[2]


def _covers(settings: ServeSettings, options: dict, at: str) -> None:
    """The local cluster in ``options`` places every deployment's replicas (``at`` "min" or "max") at once."""
    asks = replica_asks(settings.args)
    assert set(asks) == set(DEPLOYMENTS)
    for name, ask in asks.items():
        assert ask["cpus"] <= options["num_cpus"], name  # one replica fits the node
        assert ask["gpus"] <= max(options["num_gpus"], 0), name
    cpus = sum(a["cpus"] * a[at] for a in asks.values())
    assert cpus <= options["num_cpus"] + 1e-9
    shares = [a["gpus"] for a in asks.values() for _ in range(a[at])]
    assert gpus_to_place(shares) <= options["num_gpus"]


def test_gpu_fractions_are_packed_as_ray_packs_them():
    assert gpus_to_place([]) == 0 and gpus_to_place([0, 0.0]) == 0
    assert gpus_to_place([0.6, 0.6]) == 2  # two LM replicas never share a GPU
    assert gpus_to_place([0.6, 0.2, 0.15, 0.05]) == 1  # the GPU config's one-of-each: exactly one GPU
    assert gpus_to_place([0.1] * 10) == 1 and gpus_to_place([0.1] * 11) == 2
    assert gpus_to_place([0.5, 0.5, 0.5]) == 2
    assert gpus_to_place([2, 0.3, 1]) == 4  # whole GPUs, then the fraction on a GPU of its own


@pytest.mark.parametrize("config", CONFIGS)
def test_a_local_cluster_covers_every_deployment_of_the_config(config):
    settings = load_config(CONFIGS[config])
    gpus_here = 1 if config == "anygpt-gpu" else 0
    small = cluster_resources(settings, machine_cpus=2, machine_gpus=gpus_here)
    _covers(settings, small, "min")
    peak_cpus = sum(a["cpus"] * a["max"] for a in replica_asks(settings.args).values())
    assert small["num_cpus"] >= peak_cpus - 1e-9  # every replica autoscaling may add has its CPUs
    if config == "embedded":
        _covers(settings, small, "max")
        assert small["num_cpus"] == 2 and small["num_gpus"] == 0  # what the 2-core machine had, hard-coded before
    else:
        assert small["num_gpus"] == 1  # never more GPUs than the machine has
        big = cluster_resources(settings, machine_cpus=2, machine_gpus=16)
        _covers(settings, big, "max")  # with GPUs to spare, autoscaling reaches max_replicas everywhere
        assert big["num_gpus"] == settings.args.lm.autoscaling_config["max_replicas"]  # one LM replica per GPU
    many = cluster_resources(settings, machine_cpus=64, machine_gpus=gpus_here)
    assert many["num_cpus"] == 64  # never fewer CPUs than the machine has
    for options in (small, many):
        assert options["_node_ip_address"] == "127.0.0.1" and options["dashboard_host"] == "127.0.0.1"
        assert options["include_dashboard"] is False and "address" not in options


def test_the_gpu_config_places_one_lm_per_gpu_beside_the_others():
    args = load_config(CONFIGS["anygpt-gpu"]).args
    shares = {
        name: getattr(args, name).ray_actor_options["num_gpus"]
        for name in ("speech_tokenizer", "lm", "acoustic", "media")
    }
    assert sum(shares.values()) <= 1.0 + 1e-9 and shares["lm"] > 0.5  # one of each on a GPU; two LMs never
    assert shares["lm"] == max(shares.values())
    slots = args.lm_batching["max_slots"]
    assert slots >= args.max_sessions  # every session of a gateway fits one LM's slots
    assert args.lm.max_ongoing_requests >= slots + args.lm_batching["max_waiting"]  # Serve never queues before them
    target = args.lm.autoscaling_config["policy"]["policy_kwargs"]["target_per_replica"]
    assert target < slots  # a new replica starts before the first is full


def test_a_config_the_machine_cannot_place_is_refused_before_ray_starts():
    gpu = load_config(CONFIGS["anygpt-gpu"])
    with pytest.raises(ValueError, match="need 1 GPU.*this machine has 0.*--address"):
        cluster_resources(gpu, machine_cpus=16, machine_gpus=0)
    tight = load_config(CONFIGS["embedded"]).model_copy(update={"ray": RaySettings(num_cpus=1)})  # asks 1.5
    with pytest.raises(ValueError, match="CPUs"):
        cluster_resources(tight, machine_cpus=8)
    pinned = ServeSettings(ray=RaySettings(num_cpus=3, num_gpus=2, object_store_memory=100 * 2**20))
    options = cluster_resources(pinned, machine_cpus=64, machine_gpus=8)
    assert (options["num_cpus"], options["num_gpus"], options["object_store_memory"]) == (3, 2, 100 * 2**20)


def test_an_address_joins_a_cluster_and_sizes_nothing(tmp_path):
    joined = ServeSettings(ray=RaySettings(address="ray://head:10001"))
    assert cluster_resources(joined, machine_cpus=2, machine_gpus=0) == {"address": "ray://head:10001"}
    gpu = load_config(CONFIGS["anygpt-gpu"]).model_copy(update={"ray": RaySettings(address="auto")})
    assert cluster_resources(gpu, machine_cpus=2) == {"address": "auto"}  # the cluster brings the GPUs
    with pytest.raises(ValueError, match="num_cpus"):
        RaySettings(address="auto", num_cpus=4)
    with pytest.raises(ValueError, match="empty"):
        RaySettings(address=" ")
    config = tmp_path / "joined.yaml"
    config.write_text("ray:\n  address: auto\nhttp_options:\n  host: 127.0.0.1\n  port: 8123\nmodel_family: embedded\n")
    settings = load_config(config)
    assert settings.ray.address == "auto" and settings.port == 8123 and settings.args == AppArgs()
    config.write_text("ray:\n  num_cpu: 4\n")
    with pytest.raises(ValueError, match="num_cpu"):
        load_config(config)


def test_the_address_flag_overrides_the_config(monkeypatch, capsys):
    seen: list[ServeSettings] = []

    def fake_init_ray(settings):
        seen.append(settings)
        raise ValueError("stop before Ray")

    monkeypatch.setattr(app, "init_ray", fake_init_ray)
    assert app.main(["--config", str(CONFIGS["anygpt-gpu"]), "--address", "ray://head:10001"]) == 2
    assert seen[-1].ray == RaySettings(address="ray://head:10001") and seen[-1].args.model_family == "anygpt"
    assert "stop before Ray" in capsys.readouterr().err
    assert app.main(["--config", str(CONFIGS["embedded"])]) == 2
    assert seen[-1].ray == RaySettings() and seen[-1].host == "127.0.0.1"


def test_only_a_local_cluster_pins_ray_to_the_loopback_address(monkeypatch):
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    app.set_ray_environment(local=False)  # a joining driver keeps its real address
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ and os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    app.set_ray_environment()
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


_LISTENERS = """
import json
from deployments.app import RaySettings, ServeSettings, init_ray
options = init_ray(ServeSettings(ray=RaySettings(num_cpus=1, object_store_memory=100 * 2**20)))
import psutil  # Ray's own copy, importable once ray is
import ray
ray.get(ray.remote(lambda: 1).remote())  # a worker too
me = psutil.Process()
pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
rows = [[c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()] for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids]
print(json.dumps({"options": {k: v for k, v in options.items()}, "node_ip": ray.util.get_node_ip_address(),
                  "resources": ray.cluster_resources(), "listeners": rows}))
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_local_cluster_listens_on_the_loopback_address_only():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    result = subprocess.run(
        [sys.executable, "-c", _LISTENERS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=170
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["node_ip"] == "127.0.0.1" and report["resources"]["CPU"] == 1
    listeners = report["listeners"]
    assert {name for _, _, name in listeners} >= {"gcs_server", "raylet"}
    assert [row for row in listeners if row[0] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")] == []


@pytest.mark.slow  # a subprocess: > 1.5 s (tests/test_boundaries.py keeps ray out of deployments.app in the fast tier)
def test_checking_a_config_does_not_import_ray():
    # Ray reads its node address once, at import: a config check that imports ray (it once did, through the call
    # timeouts) made a local cluster take the machine's network address instead of 127.0.0.1
    code = (
        "import sys\nfrom deployments.app import load_config, DEFAULT_CONFIG, ServeSettings\n"
        "load_config(DEFAULT_CONFIG); ServeSettings()\nprint('ray' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"

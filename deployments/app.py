"""Builds the Serve application and runs it:
``anystream-serve [--config ...] [--host ...] [--port ...] [--address ...]``.

Also usable with Serve's own CLI: ``serve run deployments.app:build_app`` or
``serve run deployments/configs/embedded.yaml`` (the YAML is a Serve config file whose ``args`` are
:class:`AppArgs`; Serve ignores its top-level ``ray:`` section).

Where Ray runs comes from the config's ``ray:`` section (:class:`RaySettings`) or ``--address``: with an address,
``anystream-serve`` joins that cluster (``auto``, ``HOST:6379`` or ``ray://HOST:10001``) and places the
deployments on it; without one it starts a local single-node Ray on 127.0.0.1 only, sized by
:func:`cluster_resources` from what the config's deployments ask for.

Who may call the HTTP routes is the ``access`` argument (:class:`assistant.access.AccessConfig`): off by default,
and then the HTTP proxy must listen on a loopback address (``anystream-serve`` refuses ``http_options.host:
0.0.0.0`` without it). Ray's own ports stay on 127.0.0.1 for a local cluster whatever that host is.

Ray is imported lazily: :func:`main` must set Ray's environment (loopback node address, no usage stats)
before the first ``import ray``.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from assistant.access import AccessConfig
from assistant.models.loading import ModelSpec

if TYPE_CHECKING:
    from ray.serve import Application

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "embedded.yaml"
APP_NAME = "anystream"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
LOOPBACK = "127.0.0.1"
OBJECT_STORE_BYTES = 200 * 1024 * 1024  # a local cluster's object store unless the config says otherwise
DEPLOYMENTS = ("speech_tokenizer", "lm", "acoustic", "media", "gateway")


class DeploymentOptions(BaseModel):
    """Serve options of one deployment; unset fields keep the deployment's defaults."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(default=None, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.1, "num_gpus": 0})
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    # How long a replica that is scaled down or replaced keeps serving its ongoing requests (its drain time); the
    # deployments' own default is half a second (FAST_SHUTDOWN), too short for an LM reply to finish.
    graceful_shutdown_timeout_s: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> DeploymentOptions:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set num_replicas or autoscaling_config, not both")
        return self

    def serve_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def replica_bounds(self) -> tuple[int, int]:
        """(replicas at start, replicas at most): Serve's defaults for what is unset (one replica; autoscaling
        from ``initial_replicas`` or ``min_replicas``, default 1, up to ``max_replicas``, default 1)."""
        if self.autoscaling_config is None:
            n = self.num_replicas or 1
            return n, n
        low = int(self.autoscaling_config.get("min_replicas", 1))
        start = self.autoscaling_config.get("initial_replicas")
        start = low if start is None else int(start)
        return start, max(int(self.autoscaling_config.get("max_replicas", 1)), start)

    def replica_ask(self) -> tuple[float, float]:
        """(CPUs, GPUs) one replica asks Ray for (Serve gives a replica one CPU when ``num_cpus`` is unset)."""
        opts = self.ray_actor_options
        cpus = opts.get("num_cpus")
        return float(1.0 if cpus is None else cpus), float(opts.get("num_gpus") or 0.0)


class AppArgs(BaseModel):
    """Everything ``build_app`` needs; the ``args`` of a Serve config file."""

    model_config = ConfigDict(extra="forbid")

    model_family: Literal["embedded", "anygpt"] = "embedded"
    assets_dir: str | None = None  # embedded assets, or the AnyGPT weights root (see deployments.common.ModelSpec)
    seed: int = 0
    lm_dir: str = "AnyGPT-chat"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    lm_engine: Literal["transformers", "vllm"] = "transformers"
    voices_file: str | None = None
    loopback_only: bool = True  # ICE host candidates on 127.0.0.1 only (single machine, tests)
    max_sessions: int = Field(default=8, ge=1)
    lm_chunk_interval_s: float = Field(default=0.03, ge=0)
    encode_max_batch_size: int = Field(default=8, ge=1)
    encode_batch_wait_s: float = Field(default=0.005, ge=0)
    engine: dict[str, Any] = Field(default_factory=dict)  # EngineConfig overrides
    # LMEngineConfig overrides for each LM replica: max_slots (sessions generating at once), max_waiting,
    # slot_capacity (positions of KV cache per slot), prefill_budget, max_backlog, cuda_graphs, graph_buckets.
    lm_batching: dict[str, Any] = Field(default_factory=dict)
    # Each acoustic replica batches the chunks that arrive within this window, at most this many per call.
    acoustic_batch_window_s: float = Field(default=0.005, ge=0)
    acoustic_max_batch: int = Field(default=8, ge=1)
    # The acoustic network's CPU forward in NumPy where the model allows it (float32 on the CPU: the embedded default).
    acoustic_numpy_network: bool = True
    endpointer: dict[str, Any] = Field(default_factory=dict)  # EndpointerConfig overrides
    # Who may call the gateway (assistant.access.AccessConfig): api_keys_env / api_keys, token_secret_env /
    # token_secret, allowed_origins, max_body_bytes, max_sessions_per_client. Empty: access off (loopback only).
    access: dict[str, Any] = Field(default_factory=dict)
    # Seconds a model replica may take per call before the turn fails with "unavailable"
    # (deployments.backends.CallTimeouts: encode_s, lm_first_chunk_s, lm_next_chunk_s, acoustic_s, media_s).
    call_timeouts: dict[str, float] = Field(default_factory=dict)
    # What one WebRTC session may cost (assistant.webrtc.limits.SessionLimits: connect_timeout_s, media_timeout_s,
    # idle_timeout_s, messages_per_s, message_burst, turns_per_s, turn_burst, ...).
    session_limits: dict[str, Any] = Field(default_factory=dict)
    speech_tokenizer: DeploymentOptions = Field(default_factory=DeploymentOptions)
    lm: DeploymentOptions = Field(default_factory=DeploymentOptions)
    acoustic: DeploymentOptions = Field(default_factory=DeploymentOptions)
    media: DeploymentOptions = Field(default_factory=DeploymentOptions)
    gateway: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(num_replicas=1, max_ongoing_requests=100)
    )

    @model_validator(mode="after")
    def _valid_model_spec(self) -> AppArgs:
        self.model_spec()  # e.g. the anygpt family without a weights folder fails when the config is read
        from assistant.lm_engine import LMEngineConfig

        LMEngineConfig(**self.lm_batching_config())  # a wrong slot count fails here, not in a replica
        self.access_config()  # and a misspelt access setting fails here (its variables are read later, where used)
        from assistant.webrtc.limits import SessionLimits
        from deployments.timeouts import CallTimeouts

        CallTimeouts(**self.call_timeouts)
        SessionLimits(**self.session_limits)
        return self

    def access_config(self) -> AccessConfig:
        return AccessConfig.from_dict(self.access)

    def lm_batching_config(self) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.lm_batching.items()}

    def model_spec(self) -> dict[str, Any]:
        return ModelSpec(
            family=self.model_family,
            assets_dir=self.assets_dir,
            seed=self.seed,
            lm_dir=self.lm_dir,
            dtype=self.dtype,
            device=self.device,
            lm_engine=self.lm_engine,
            voices_file=self.voices_file,
        ).to_dict()


class RaySettings(BaseModel):
    """The ``ray:`` section of a config: which Ray cluster runs the app.

    ``address`` set: join that running cluster (``auto``, ``HOST:6379``, ``ray://HOST:10001``); its nodes bring
    their own resources, so the sizes below must stay unset. Unset: start a local single-node Ray bound to 127.0.0.1
    with ``num_cpus`` / ``num_gpus`` / ``object_store_memory`` (each defaulting as :func:`cluster_resources` says).
    """

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: int | None = Field(default=None, ge=0)
    object_store_memory: int | None = Field(default=None, ge=80 * 1024 * 1024)  # Ray's floor is 75 MiB

    @model_validator(mode="after")
    def _sizes_only_for_a_local_cluster(self) -> RaySettings:
        if self.address is not None:
            if not self.address.strip():
                raise ValueError("ray.address is empty: leave it out for a local cluster")
            sizes = ("num_cpus", "num_gpus", "object_store_memory")
            sized = [name for name in sizes if getattr(self, name) is not None]
            if sized:
                raise ValueError(
                    f"ray.{', ray.'.join(sized)}: sizes a local cluster only; a cluster joined at "
                    f"ray.address {self.address!r} brings its own resources"
                )
        return self


class ServeSettings(BaseModel):
    """A YAML config: the app's args, where Serve's HTTP proxy listens and which Ray cluster runs it."""

    args: AppArgs = Field(default_factory=AppArgs)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    ray: RaySettings = Field(default_factory=RaySettings)

    @model_validator(mode="after")
    def _exposed_only_with_access(self) -> ServeSettings:
        check_exposure(self.host, self.args)
        return self


def is_loopback_host(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, args: AppArgs) -> None:
    """Raises ValueError when Serve's HTTP proxy would listen beyond this machine with access off: anyone who can
    reach the port could then start sessions on our GPUs."""
    if not is_loopback_host(host) and not args.access_config().enabled:
        raise ValueError(
            f"http_options.host is {host!r}, which other machines can reach, but access is off: configure "
            "the app's access section (api_keys_env and/or token_secret_env) or listen on 127.0.0.1"
        )


def load_config(yaml_path: str | Path) -> ServeSettings:
    """Reads a Serve config file (``http_options`` + ``applications[0].args`` + an optional top-level ``ray``) or a
    bare mapping of AppArgs (with an optional ``ray`` and ``http_options``)."""
    with open(yaml_path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{yaml_path}: expected a mapping at the top level")
    if "applications" in doc:
        apps = doc["applications"] or []
        if len(apps) != 1:
            raise ValueError(f"{yaml_path}: expected exactly one application, got {len(apps)}")
        args = apps[0].get("args") or {}
    else:
        args = {k: v for k, v in doc.items() if k not in ("http_options", "ray")}
    http = doc.get("http_options") or {}
    return ServeSettings(
        args=AppArgs.model_validate(args),
        host=http.get("host", DEFAULT_HOST),
        port=http.get("port", DEFAULT_PORT),
        ray=RaySettings.model_validate(doc.get("ray") or {}),
    )


def build_app(args: AppArgs | dict[str, Any] | None = None) -> Application:
    """The Serve application: Gateway over SpeechTokenizer, LM, AcousticDecoder and MediaDecoder deployments."""
    from deployments.acoustic import AcousticDecoderDeployment
    from deployments.common import as_deployment
    from deployments.gateway import Gateway
    from deployments.lm import LMDeployment
    from deployments.media import MediaDecoderDeployment
    from deployments.speech_tokenizer import SpeechTokenizerDeployment

    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args or {})
    model = args.model_spec()
    speech = (
        as_deployment(SpeechTokenizerDeployment)
        .options(**args.speech_tokenizer.serve_options())
        .bind(model, args.encode_max_batch_size, args.encode_batch_wait_s)
    )
    lm = (
        as_deployment(LMDeployment)
        .options(**args.lm.serve_options())
        .bind(model, args.lm_chunk_interval_s, engine=args.lm_batching_config())
    )
    from assistant.pipeline.engine import EngineConfig

    context_frames = EngineConfig(**args.engine).context_frames  # the replica trims context to what the engine sends
    acoustic = (
        as_deployment(AcousticDecoderDeployment)
        .options(**args.acoustic.serve_options())
        .bind(model, args.acoustic_batch_window_s, args.acoustic_max_batch, context_frames, args.acoustic_numpy_network)
    )
    media = as_deployment(MediaDecoderDeployment).options(**args.media.serve_options()).bind(model)
    return (
        as_deployment(Gateway)
        .options(**args.gateway.serve_options())
        .bind(
            speech,
            lm,
            acoustic,
            media,
            model=model,
            loopback_only=args.loopback_only,
            max_sessions=args.max_sessions,
            engine=dict(args.engine),
            endpointer=dict(args.endpointer),
            access=dict(args.access),
            call_timeouts=dict(args.call_timeouts),
            session_limits=dict(args.session_limits),
        )
    )


def set_ray_environment(local: bool = True) -> None:
    """Keeps Ray quiet and, for a local cluster, on 127.0.0.1; must run before the first ``import ray``.

    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray take the loopback address as this node's IP (Ray reads it once,
    at import): the GCS, raylet, object manager, workers and agents then bind to 127.0.0.1. A driver that joins a
    cluster (``local=False``) must keep its real address, which the cluster's raylet on this node is known by.
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if local:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def runtime_env() -> dict[str, Any]:
    """Lets every replica import the project without uploading the working tree."""
    paths = [str(PROJECT_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}


def replica_asks(args: AppArgs) -> dict[str, dict[str, float]]:
    """Per deployment: one replica's ``cpus`` and ``gpus``, its replicas at start (``min``) and at most (``max``)."""
    asks = {}
    for name in DEPLOYMENTS:
        opts: DeploymentOptions = getattr(args, name)
        cpus, gpus = opts.replica_ask()
        low, high = opts.replica_bounds()
        asks[name] = {"cpus": cpus, "gpus": gpus, "min": low, "max": high}
    return asks


def gpus_to_place(shares: list[float]) -> int:
    """Whole GPUs that hold these replicas' GPU asks: a fraction below 1 shares a GPU only with fractions that fit
    beside it (first fit, largest first, as Ray packs them onto one node); an ask of 1 or more takes whole GPUs."""
    whole = 0
    free: list[float] = []  # what is left on each GPU that holds fractions
    for share in sorted((round(s, 6) for s in shares if s > 0), reverse=True):
        if share >= 1:
            whole += math.ceil(share)
            continue
        for i, left in enumerate(free):
            if share <= left + 1e-9:
                free[i] = left - share
                break
        else:
            free.append(1.0 - share)
    return whole + len(free)


def _demand(asks: dict[str, dict[str, float]], at: str) -> tuple[float, int]:
    cpus = round(sum(a["cpus"] * a[at] for a in asks.values()), 6)
    gpus = gpus_to_place([a["gpus"] for a in asks.values() for _ in range(int(a[at]))])
    return cpus, gpus


def cluster_resources(
    settings: ServeSettings, machine_cpus: int | None = None, machine_gpus: int = 0
) -> dict[str, Any]:
    """The keyword arguments of ``ray.init`` for ``settings`` (the runtime environment aside); pure.

    With ``ray.address``: ``{"address": ...}``, nothing else (the cluster has its own resources). Otherwise a local
    single-node cluster bound to 127.0.0.1, dashboard off, sized for the config's deployments at their most
    replicas (``max_replicas`` of autoscaling ones): ``num_cpus`` = their CPU asks summed, but never fewer than
    this machine's ``machine_cpus``; ``num_gpus`` = the GPUs that hold their GPU shares (fractions packed as Ray
    packs them), but never more than the ``machine_gpus`` there are. ``ray.num_cpus`` / ``ray.num_gpus`` /
    ``ray.object_store_memory`` override these.

    Raises:
        ValueError: the local cluster cannot place even each deployment's first replicas (the app would wait
            forever for them).
    """
    ray = settings.ray
    if ray.address is not None:
        return {"address": ray.address}
    asks = replica_asks(settings.args)
    peak_cpus, peak_gpus = _demand(asks, "max")
    start_cpus, start_gpus = _demand(asks, "min")
    if ray.num_cpus is not None:
        num_cpus = ray.num_cpus
    else:
        num_cpus = max(math.ceil(peak_cpus), machine_cpus or 0, 1)
    num_gpus = ray.num_gpus if ray.num_gpus is not None else min(peak_gpus, machine_gpus)
    if start_cpus > num_cpus:
        raise ValueError(
            f"the deployments' first replicas ask for {start_cpus:g} CPUs; the local cluster has "
            f"{num_cpus} (ray.num_cpus)"
        )
    if start_gpus > num_gpus:
        where = "ray.num_gpus" if ray.num_gpus is not None else f"this machine has {machine_gpus}"
        raise ValueError(
            f"the deployments' first replicas need {start_gpus} GPU(s); the local cluster has "
            f"{num_gpus} ({where}): run on a GPU machine or join a cluster with --address"
        )
    return {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "object_store_memory": ray.object_store_memory or OBJECT_STORE_BYTES,
        "include_dashboard": False,
        "dashboard_host": LOOPBACK,
        "_node_ip_address": LOOPBACK,
    }


def machine_gpus() -> int:
    """The NVIDIA GPUs this process may use, as Ray counts them (NVML, within ``CUDA_VISIBLE_DEVICES``); 0 when
    there is no driver. Imports ray: call after :func:`set_ray_environment`."""
    try:
        from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager as Nvidia

        count = Nvidia.get_current_node_num_accelerators()
        visible = Nvidia.get_current_process_visible_accelerator_ids()
    except Exception:
        return 0
    return count if visible is None else min(count, len(visible))


def init_ray(settings: ServeSettings | None = None) -> dict[str, Any]:
    """Starts (or joins) Ray for ``settings``; returns the ``ray.init`` arguments it used (runtime env aside)."""
    settings = settings or ServeSettings()
    local = settings.ray.address is None
    set_ray_environment(local=local)
    import ray

    options = cluster_resources(settings, os.cpu_count(), machine_gpus() if local else 0)
    ray.init(**options, runtime_env=runtime_env())
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anystream-serve", description="Serve the anystream assistant.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve config YAML (default: %(default)s)")
    parser.add_argument("--host", default=None, help=f"HTTP host (default: from the config, else {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=None, help=f"HTTP port (default: from the config, else {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster (auto, HOST:6379, ray://HOST:10001) instead of starting a local "
        "one on 127.0.0.1 (default: the config's ray.address)",
    )
    opts = parser.parse_args(argv)
    try:
        settings = load_config(opts.config)
        if opts.address is not None:
            settings = settings.model_copy(update={"ray": RaySettings(address=opts.address)})
    except (OSError, ValueError) as exc:
        print(f"anystream-serve: cannot read config {opts.config}: {exc}", file=sys.stderr)
        return 2
    host = opts.host or settings.host
    port = opts.port or settings.port
    try:
        check_exposure(host, settings.args)
        if settings.ray.address is None:
            # a local cluster's replicas inherit this environment: a missing variable fails here, not in a replica
            settings.args.access_config().resolve(os.environ)
    except ValueError as exc:
        print(f"anystream-serve: {opts.config}: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()

    def install_handlers() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    install_handlers()
    try:
        options = init_ray(settings)
    except ValueError as exc:  # a config this machine cannot place fails here, not in a serve.run that never ends
        print(f"anystream-serve: {opts.config}: {exc}", file=sys.stderr)
        return 2
    install_handlers()  # ray.init installs its own SIGTERM handler, which aborts the process
    if "address" in options:
        print(f"anystream: joined the Ray cluster at {options['address']}", flush=True)
    else:
        print(
            f"anystream: local Ray on {LOOPBACK} with {options['num_cpus']} CPUs, {options['num_gpus']} GPUs",
            flush=True,
        )
    import ray
    from ray import serve

    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(settings.args), name=APP_NAME, route_prefix="/", blocking=False)
        shown = "127.0.0.1" if host in ("127.0.0.1", "localhost") else host
        install_handlers()
        access = "on" if settings.args.access_config().enabled else "off (this machine only)"
        print(f"anystream is serving at http://{shown}:{port} (POST /offer, GET /health; access {access})", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        print("anystream: shutting down", flush=True)
        try:
            if "address" in options:
                serve.delete(APP_NAME)  # a joined cluster keeps Serve (and whatever else it runs) for others
            else:
                serve.shutdown()
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Builds the Serve application and runs it: ``anystream-serve [--config ...] [--host ...] [--port ...]``.

Also usable with Serve's own CLI: ``serve run deployments.app:build_app`` or
``serve run deployments/configs/embedded.yaml`` (the YAML is a Serve config file whose ``args`` are
:class:`AppArgs`).

Ray is imported lazily: :func:`main` must set Ray's environment (loopback node address, no usage stats)
before the first ``import ray``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.common import ModelSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "embedded.yaml"
APP_NAME = "anystream"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
OBJECT_STORE_BYTES = 200 * 1024 * 1024


class DeploymentOptions(BaseModel):
    """Serve options of one deployment; unset fields keep the deployment's defaults."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(default=None, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.1, "num_gpus": 0})
    max_ongoing_requests: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> DeploymentOptions:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set num_replicas or autoscaling_config, not both")
        return self

    def serve_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


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
    endpointer: dict[str, Any] = Field(default_factory=dict)  # EndpointerConfig overrides
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
        return self

    def model_spec(self) -> dict[str, Any]:
        return ModelSpec(family=self.model_family, assets_dir=self.assets_dir, seed=self.seed, lm_dir=self.lm_dir,
                         dtype=self.dtype, device=self.device, lm_engine=self.lm_engine,
                         voices_file=self.voices_file).to_dict()


class ServeSettings(BaseModel):
    """A YAML config: the app's args plus where Serve's HTTP proxy listens."""

    args: AppArgs = Field(default_factory=AppArgs)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT


def load_config(yaml_path: str | Path) -> ServeSettings:
    """Reads a Serve config file (``http_options`` + ``applications[0].args``) or a bare mapping of AppArgs."""
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
        args = {k: v for k, v in doc.items() if k != "http_options"}
    http = doc.get("http_options") or {}
    return ServeSettings(args=AppArgs.model_validate(args), host=http.get("host", DEFAULT_HOST),
                         port=http.get("port", DEFAULT_PORT))


def build_app(args: AppArgs | dict[str, Any] | None = None):
    """The Serve application: Gateway over SpeechTokenizer, LM, AcousticDecoder and MediaDecoder deployments."""
    from deployments.acoustic import AcousticDecoderDeployment
    from deployments.gateway import Gateway
    from deployments.lm import LMDeployment
    from deployments.media import MediaDecoderDeployment
    from deployments.speech_tokenizer import SpeechTokenizerDeployment

    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args or {})
    model = args.model_spec()
    speech = SpeechTokenizerDeployment.options(**args.speech_tokenizer.serve_options()).bind(
        model, args.encode_max_batch_size, args.encode_batch_wait_s)
    lm = LMDeployment.options(**args.lm.serve_options()).bind(model, args.lm_chunk_interval_s)
    acoustic = AcousticDecoderDeployment.options(**args.acoustic.serve_options()).bind(model)
    media = MediaDecoderDeployment.options(**args.media.serve_options()).bind(model)
    return Gateway.options(**args.gateway.serve_options()).bind(
        speech, lm, acoustic, media, model=model, loopback_only=args.loopback_only, max_sessions=args.max_sessions,
        engine=dict(args.engine), endpointer=dict(args.endpointer))


def set_ray_environment() -> None:
    """Keeps Ray on 127.0.0.1 and quiet; must run before the first ``import ray``."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


def runtime_env() -> dict[str, Any]:
    """Lets every replica import the project without uploading the working tree."""
    paths = [str(PROJECT_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}


def init_ray() -> None:
    set_ray_environment()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, runtime_env=runtime_env())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anystream-serve", description="Serve the anystream assistant.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve config YAML (default: %(default)s)")
    parser.add_argument("--host", default=None, help=f"HTTP host (default: from the config, else {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=None, help=f"HTTP port (default: from the config, else {DEFAULT_PORT})")
    opts = parser.parse_args(argv)
    try:
        settings = load_config(opts.config)
    except (OSError, ValueError) as exc:
        print(f"anystream-serve: cannot read config {opts.config}: {exc}", file=sys.stderr)
        return 2
    host = opts.host or settings.host
    port = opts.port or settings.port

    stop = threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()

    def install_handlers() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    install_handlers()
    init_ray()
    install_handlers()  # ray.init installs its own SIGTERM handler, which aborts the process
    import ray
    from ray import serve

    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(settings.args), name=APP_NAME, route_prefix="/", blocking=False)
        shown = "127.0.0.1" if host in ("127.0.0.1", "localhost") else host
        install_handlers()
        print(f"anystream is serving at http://{shown}:{port} (POST /offer, GET /health)", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        print("anystream: shutting down", flush=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The anystream app on a local Ray for the fault and soak suites: started, healthy, and torn down again."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from deployments.app import AppArgs, build_app, runtime_env, set_ray_environment

APP = "anystream"


def health(url: str) -> dict:
    """``GET /health`` as JSON, whatever its status (503 carries the same body)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as refused:
        return json.loads(refused.read())


@contextlib.contextmanager
def serving(port: int, args: dict, ready_timeout_s: float = 120.0) -> Iterator[str]:
    """Runs the app built from ``args`` (``AppArgs`` fields) on 127.0.0.1:``port``; yields its URL once ``/health``
    says ok, and shuts Serve and Ray down afterwards."""
    set_ray_environment()
    import ray
    from ray import serve

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 1024 * 1024,
        runtime_env=runtime_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(AppArgs.model_validate(args)), name=APP, route_prefix="/")
        deadline, last = time.monotonic() + ready_timeout_s, {}
        while (last := _health_or_empty(url)).get("status") != "ok":
            if time.monotonic() > deadline:
                raise AssertionError(f"/health not ok within {ready_timeout_s} s: {last}")
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def _health_or_empty(url: str) -> dict:
    try:
        return health(url)
    except (OSError, ValueError):  # the proxy is not listening yet
        return {}

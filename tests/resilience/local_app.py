"""The anystream app on a local Ray for the fault and soak suites: started, healthy, and torn down again."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from local_ray import local_serve

from deployments.app import AppArgs, build_app

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
    url = f"http://127.0.0.1:{port}"
    with local_serve(port):
        from ray import serve

        serve.run(build_app(AppArgs.model_validate(args)), name=APP, route_prefix="/")
        deadline, last = time.monotonic() + ready_timeout_s, {}
        while (last := _health_or_empty(url)).get("status") != "ok":
            if time.monotonic() > deadline:
                raise AssertionError(f"/health not ok within {ready_timeout_s} s: {last}")
            time.sleep(0.5)
        yield url


def _health_or_empty(url: str) -> dict:
    try:
        return health(url)
    except (OSError, ValueError):  # the proxy is not listening yet
        return {}

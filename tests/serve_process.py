"""``anystream-serve`` (a local Ray cluster plus the Serve app on 127.0.0.1) as a subprocess, for the slow tests that
need the whole server (``tests/e2e``, ``tests/bench``).

``anystream_serve(log_path, config=, ready_timeout_s=)``: starts the server on a free port with its output in
``log_path``; yields ``(url, process)`` once it has printed its URL (every deployment is up) and ``/health`` says ok.
On the way out it is stopped with SIGTERM (its whole process group killed after 60 s) and the log's tail printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_CONFIG = ROOT / "deployments" / "configs" / "embedded.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return json.loads(response.read())["status"] == "ok"
    except OSError:  # not listening yet, or a 503 while a deployment starts
        return False


@contextlib.contextmanager
def anystream_serve(
    log_path: Path, config: Path = EMBEDDED_CONFIG, ready_timeout_s: float = 240
) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    with open(log_path, "w+") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from deployments.app import main; sys.exit(main())",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + ready_timeout_s
            while not ("anystream is serving at" in log_path.read_text() and _healthy(url)):
                assert server.poll() is None, f"server exited early with code {server.returncode}"
                assert time.monotonic() < deadline, f"server did not come up within {ready_timeout_s} s"
                time.sleep(1)
            yield url, server
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
            print(log_path.read_text()[-3000:])

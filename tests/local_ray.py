"""A local Ray with Serve for the tests that need one (``tests/deployments``, ``tests/resilience``).

``local_serve(port)``: sets the project's Ray environment, starts Ray small (2 CPUs, no dashboard, a 200 MB object
store, the project's runtime env) and Serve's HTTP proxy on 127.0.0.1:``port``; shuts Serve and Ray down on the way
out. Import ray (and modules that import it) only inside the block: Ray reads its environment once, at import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from deployments.app import runtime_env, set_ray_environment


@contextlib.contextmanager
def local_serve(port: int) -> Iterator[None]:
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
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield
    finally:
        serve.shutdown()
        ray.shutdown()

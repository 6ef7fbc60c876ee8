"""``anystream-bench``: load benchmark of the anystream assistant (see :mod:`anystream_bench.load` and
``docs/benchmarks.md``)."""

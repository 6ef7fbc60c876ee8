"""Suite-wide settings.

Torch's intra-op threads fight each other on a small, shared CPU (tests, Ray replicas and the test runner all at
once): two threads made some model tests ten times slower than one. Tests use tiny models, so one thread is plenty.
"""

import importlib.util

if importlib.util.find_spec("torch") is not None:
    import torch

    torch.set_num_threads(1)

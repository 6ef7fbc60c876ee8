"""Fixtures shared by the model tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def anygpt_root(tmp_path_factory) -> Path:
    """A complete AnyGPT weights root with random checkpoints (``anygpt_fixtures.write_anygpt_root``), built once per
    session: tests read it, never change it."""
    from anygpt_fixtures import write_anygpt_root

    return write_anygpt_root(tmp_path_factory.mktemp("anygpt"))

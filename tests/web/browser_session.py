"""Headless Debian Chromium driven by Playwright, for the browser page's tests (no ``playwright install``: Playwright
starts ``/usr/bin/chromium``).

- ``chromium_page(profile_dir, fake_microphone=None)``: a context manager yielding ``(page, console)``: a page of a
  fresh Chromium (its profile in ``profile_dir``) and a list collecting its console lines and uncaught errors. With
  ``fake_microphone`` (a 48 kHz 16-bit WAV, which Chromium loops) getUserMedia succeeds without asking and captures
  that file. WebRTC may use loopback addresses (``--allow-loopback-in-peer-connection``); without it Chromium offers
  no 127.0.0.1 candidate and cannot reach a server that listens on loopback only.
- ``save_screenshot(page, folder, name)``: a full-page PNG in ``folder`` and, when the environment names a folder in
  ``ANYSTREAM_ARTIFACTS``, a copy there; prints the paths.

Tests skip (with the reason) only when ``/usr/bin/chromium`` or the playwright package is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def require_chromium() -> Any:
    """Playwright's ``sync_playwright``, or a skip saying what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (make system-packages installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs the playwright package (pip install -e '.[dev]')")
    return sync_playwright


@contextlib.contextmanager
def chromium_page(profile_dir: Path, fake_microphone: Path | None = None) -> Iterator[tuple[Any, list[str]]]:
    sync_playwright = require_chromium()
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-loopback-in-peer-connection",
    ]
    if fake_microphone is not None:
        args += [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_microphone}",
        ]
    console: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir), executable_path=str(CHROMIUM), headless=True, args=args
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"uncaught: {error}"))
            yield page, console
        finally:
            context.close()


def save_screenshot(page: Any, folder: Path, name: str) -> Path:
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    artifacts = os.environ.get("ANYSTREAM_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        copy = Path(artifacts) / name
        shutil.copyfile(path, copy)
        print(f"screenshot: {copy}")
    return path

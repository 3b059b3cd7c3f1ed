"""The system Chromium driven by Playwright, with a client certificate per browser context.

Playwright's own browser download does not work here, so the tests launch Debian's `chromium` (installed by
`make browser`, which `make test` runs first). Without it (or without Playwright) the browser tests are skipped
with a message that says how to install it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
# Without the background-networking flags, Chromium's connections are refused by a closed network.
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    """The system Chromium, or None."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> tuple[Any, str]:
    """Playwright's sync API and the Chromium path; skip the test when either is missing."""
    try:
        from playwright import sync_api
    except ImportError:
        pytest.skip("playwright is not installed: run `make install`")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium: run `make browser` as root (apt-get install chromium) to run the browser tests")
    return sync_api, path


@contextmanager
def launched() -> Iterator[Any]:
    """A headless system Chromium (Playwright gives each launch a fresh temporary profile directory)."""
    sync_api, path = require_browser()
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, headless=True, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


def context_for(browser: Any, tls: Path, who: str | None, origins: list[str]) -> Any:
    """A browser context that presents `who`'s client certificate to `origins` (None: no certificate)."""
    certs = [] if who is None else [{"origin": o, "certPath": str(tls / f"{who}.crt"),
                                     "keyPath": str(tls / f"{who}.key")} for o in origins]
    return browser.new_context(ignore_https_errors=True, client_certificates=certs,
                               viewport={"width": 1280, "height": 900})

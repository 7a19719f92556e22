"""Headless Chromium for the browser tests (test_serving_routes_ui.py, test_routes_visualize.py).

One policy: a test that needs the browser fails, never skips, when it is missing, with the command that installs
it; `make test` installs it first when it can (Makefile: browser), so its absence is a broken setup, not a reason
to pass. The paths are Debian's (`chromium`, `chromium-driver`); `make test CHROMIUM=... CHROMEDRIVER=...` passes
others on as CHARLM_CHROMIUM and CHARLM_CHROMEDRIVER.
"""
import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("CHARLM_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHARLM_CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"

# What this machine needs: root in a container (no sandbox), no GPU, a small /dev/shm; and nothing the browser
# would do on its own (fetch updates, sync, QUIC probes) competing with the test or reaching the network.
HEADLESS_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync")


def require_browser() -> None:
    """Fails the calling test, naming what is missing and how to install it, unless both binaries are there."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not (path.is_file() and os.access(path, os.X_OK))]
    if missing:
        pytest.fail(f"headless Chromium is needed and {', '.join(missing)} is missing: install it as root with "
                    f"`{INSTALL}` (`make test` does this itself when run as root)", pytrace=False)


def flags(profile: Path, window_size: str) -> list[str]:
    """The command-line flags for one browser: HEADLESS_FLAGS, its own profile directory and its window size."""
    return [*HEADLESS_FLAGS, f"--user-data-dir={profile}", f"--window-size={window_size}"]

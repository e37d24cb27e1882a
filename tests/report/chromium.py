"""Headless Chromium for the report tests: the HTML is judged as a browser builds it."""

from __future__ import annotations

import subprocess
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Chromium run once on `url` with a fresh profile, nothing fetched in the background."""
    profile = tmp_path / f"chromium-profile-{len(extra)}"
    args = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1280,2400", "--virtual-time-budget=2000", *extra, url,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def dom(tmp_path: Path, page: Path) -> str:
    """The DOM Chromium built from a report file, serialised."""
    done = chromium(tmp_path, page.as_uri(), "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout

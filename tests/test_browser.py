"""The report in a real headless browser: Chromium renders index.html from disk (no server, no
network) and the screenshot shows the page with its embedded figures. Skipped without Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from hf_spectral.report import write_report
from test_plots import assert_not_blank, make_dynamics

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = name if Path(name).is_file() else shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = find_chromium()


def screenshot(page: Path, out: Path, profile: Path, size: str = "1280,2000") -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={size}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=90,
    )


def near(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels are within ``tolerance`` of colour ``rgb`` (0-255) in every channel."""
    return int((np.abs(pixels[..., :3] * 255 - np.array(rgb)) <= tolerance).all(axis=-1).sum())


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (/usr/bin/chromium, chromium or google-chrome on PATH): "
                    "install it (Debian: apt-get install -y chromium) to run the browser check")
def test_report_renders_in_headless_chromium(tmp_path):
    # Agreement/alignment left out: fewer figures to draw; the training figure (checked below) comes first.
    index = write_report(make_dynamics(agreement=False, alignment=False), tmp_path / "report", formats=("png",))
    shot = tmp_path / "screenshot.png"
    result = screenshot(index, shot, tmp_path / "profile")
    assert result.returncode == 0 and shot.is_file(), f"chromium failed: {result.stderr[-800:]}"
    pixels = imread(shot)
    assert pixels.shape[:2] == (2000, 1280)
    assert_not_blank(pixels, min_std=0.05, min_colors=200)
    # The embedded figures were decoded and drawn: the training figure's red rank line and blue
    # accuracy line (matplotlib C3 / C0) are on screen, which text and CSS alone never paint.
    assert near(pixels, (214, 39, 40)) > 300, "no red rank line in the screenshot"
    assert near(pixels, (31, 119, 180)) > 300, "no blue accuracy line in the screenshot"

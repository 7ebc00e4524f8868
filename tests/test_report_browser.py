"""report.html in a real headless browser (Debian's chromium): it opens offline without a console
message, shows its tables, and every embedded figure decodes."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from plasticity_lab.analysis.report import report
from tests.test_report import write_mixed_study

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0",
]
# Counts images and those that did not decode, into attributes that --dump-dom shows.
IMAGE_PROBE = (
    '<script>window.addEventListener("load", () => { const imgs = [...document.images];'
    " document.body.dataset.images = imgs.length;"
    " document.body.dataset.broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length; });</script>"
)


def chromium() -> Path:
    """Debian's chromium, installed with apt-get on first use when this is root with apt."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (install it as root: apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # stale or missing package lists
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
    if not CHROMIUM.exists():
        pytest.skip(f"apt-get install -y chromium failed: {done.stderr.strip()[-300:]}")
    return CHROMIUM


def browse(page: Path, tmp_path: Path, *extra: str) -> tuple[str, list[str]]:
    """(stdout, console lines) of one headless chromium run on ``page``."""
    done = subprocess.run(
        [str(chromium()), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return done.stdout, console


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    root = write_mixed_study(tmp_path_factory.mktemp("browser") / "study")
    with contextlib.redirect_stdout(io.StringIO()):
        return report(root, reps=100)


def test_console_scan_catches_a_script_error(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><script>throw new Error("kaboom")</script></body></html>')
    _, console = browse(page, tmp_path, "--dump-dom")
    assert any("Uncaught Error: kaboom" in line for line in console), console


def test_report_opens_offline_with_tables_and_decoded_figures(report_html, tmp_path):
    page = tmp_path / "probe.html"  # a copy with the image probe; report.html itself has no script
    page.write_text(report_html.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    dom, console = browse(page, tmp_path, "--dump-dom")
    assert console == []
    body = re.search(r"<body[^>]*>", dom).group(0)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    assert images == dom.count('<img alt="') == dom.count('src="data:image/png;base64,') >= 20
    assert 'data-broken="0"' in body
    assert dom.count("<table>") >= 5 and "Test return: mean" in dom and "Incomplete runs" in dom and "Difference vs baseline" in dom
    assert "method/seed_2 is incomplete" in dom


def test_report_screenshot_is_not_blank(report_html, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    _, console = browse(report_html, tmp_path, f"--screenshot={shot}", "--window-size=1300,2400", "--hide-scrollbars")
    assert console == []
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2400, 1300)
    assert (pixels < 200).mean() > 0.02  # text, tables and figures, not an empty page

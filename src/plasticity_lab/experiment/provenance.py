"""The code version a run was made with, recorded in every invocation of its run.json.

A study pools runs made over days, often by several versions of the code; ``plab report`` refuses
to pool runs from different versions unless told to, and for that each run must say which code
made it: the git commit of the checkout the package runs from and whether that checkout had
uncommitted changes to tracked files (untracked files and ignored outputs such as results/ do not
count), plus the installed package version. Outside a git checkout (an installed wheel) the commit
is "unknown" and the package version is what identifies the code.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_S = 10


def _git(*args: str) -> str | None:
    """stdout of a git command run in the package's directory, None when it fails."""
    try:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """``{"git_commit", "git_dirty", "package_version"}`` of the running code (cached: the code a
    process runs does not change while it runs).

    The commit is taken only when the package's own files are tracked by that repository, so a
    package installed inside some other project's checkout does not report that project's commit.
    """
    try:
        version = metadata.version("plasticity-lab")
    except metadata.PackageNotFoundError:
        version = "unknown"
    commit, dirty = "unknown", None
    if _git("ls-files", "--error-unmatch", str(PACKAGE_DIR / "__init__.py")) is not None:
        commit = _git("rev-parse", "HEAD") or "unknown"
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {"git_commit": commit, "git_dirty": dirty, "package_version": version}

"""Which code a running voicegate is: its version and, from a git checkout, its commit (``voicegate_build_info``).

A benchmark that compares two versions must know that each server ran the version it was meant to (``python -m``
imports the package from the current directory before ``PYTHONPATH``: a server started from the wrong directory runs
the wrong code). ``voicegate load`` reports the commits it found on ``/metrics`` as ``server_commits``.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from voicegate import __version__

UNKNOWN = "unknown"


@functools.cache
def source_commit() -> str:
    """The short commit of the checkout the package was imported from, ``+dirty`` when tracked files differ from it;
    ``unknown`` when it is not a git checkout (an installed wheel) or git is missing."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return UNKNOWN
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return commit + ("+dirty" if dirty else "") if commit else UNKNOWN


def register_build_info(registry: CollectorRegistry) -> None:
    """Add ``voicegate_build_info{version,commit} 1`` to ``registry`` (a worker's or the supervisor's)."""
    labels = {"version": __version__, "commit": source_commit()}
    Gauge("voicegate_build_info", "The running code: version and git commit (1)", list(labels),
          registry=registry).labels(**labels).set(1)

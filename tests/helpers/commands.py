"""Running the repository's commands as a careless user would, and checking how they fail.

Each check: a non-zero exit status, no ``Traceback``, an error of a few lines naming what is
wrong, and the user's files byte-for-byte unchanged (:func:`digest` before and after).
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import train_helpers as h
from paths import BENCHMARKS, EXPERIMENTS, REPO

# Lines TensorFlow / absl print at start-up on every run, whatever happens afterwards.
STARTUP_NOISE = ("oneDNN custom operations", "All log messages before absl::InitializeLog")


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (what "nothing of the user's changed" means)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def error_lines(stderr: str) -> list[str]:
    return [
        ln for ln in stderr.splitlines()
        if ln.strip() and not any(n in ln for n in STARTUP_NOISE)
        and not ln.startswith(("I1", "I0", "W1", "W0"))  # absl INFO / WARNING log lines
    ]  # fmt: skip


def run_cli(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python experiments/<script> args`` (or ``benchmarks/<script>``) from the repo root."""
    path = EXPERIMENTS / script if (EXPERIMENTS / script).exists() else BENCHMARKS / script
    return subprocess.run([sys.executable, str(path), *args], env=h.subprocess_env(1),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)  # fmt: skip


def assert_clean_failure(proc: subprocess.CompletedProcess, *must_mention: str) -> str:
    """Exit status != 0, no traceback, a short error naming ``must_mention``; returns it."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = error_lines(proc.stderr)
    assert 1 <= len(lines) <= 6, lines
    text = "\n".join(lines)
    for word in must_mention:
        assert word in text, (word, text)
    return text


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tiny tmpfs at ``path`` (root only); skips the test where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)

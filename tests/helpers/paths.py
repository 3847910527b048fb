"""Where the repository's commands live, for tests that run them as subprocesses."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"
BENCHMARKS = REPO / "benchmarks"

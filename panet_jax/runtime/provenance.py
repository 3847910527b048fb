"""What produced a figure: the command line, package versions and the host, for the JSON
reports of the pre-flight and the benchmarks."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Sequence

CORE_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def package_versions(extra: Sequence[str] = ()) -> dict[str, str | None]:
    """Installed versions of the core packages and ``extra`` (``None``: not installed), and
    Python's."""
    out: dict[str, str | None] = {}
    for name in (*CORE_PACKAGES, *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def provenance(extra_packages: Sequence[str] = ()) -> dict[str, object]:
    """``{'command', 'versions', 'host'}`` of this process."""
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "versions": package_versions(extra_packages),
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "machine": platform.processor() or platform.machine(),
        },
    }

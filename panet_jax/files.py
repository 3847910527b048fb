"""Writing files for a user without ever losing one: temporary file, then an atomic rename.

Every file the project writes for a user (masks, overlays, results, converted weights, configs,
episode lists) goes through :func:`atomic_write`: the content is written to a temporary file in
the destination's directory, flushed to disk, given the permissions a plain ``open()`` would
give (``0o666`` minus the umask, not ``mkstemp``'s ``0o600``), and only then renamed into place.
A failure (a full disk, a crash) leaves the old file whole and no partial file behind.
Without ``overwrite`` an existing destination is never replaced, even by a concurrent writer
(the final step is a hard link, which fails if the name exists).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"  # temporary files of unfinished writes (removed on failure)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _link_no_clobber(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest`` unless ``dest`` exists (a hard link is atomic and fails on an
    existing name; file systems without hard links fall back to check-then-rename)."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise FileExistsError(f"{os.fspath(dest)!r} exists; refusing to overwrite it") from None
    except OSError:
        if dest.exists():
            raise FileExistsError(f"{os.fspath(dest)!r} exists; refusing to overwrite it") from None
        os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it to ``path``.

    Raises ``FileExistsError`` (before and after writing) when ``path`` exists and not
    ``overwrite``. On any error the temporary file is removed and ``path`` is untouched.
    """
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{os.fspath(dest)!r} exists; refusing to overwrite it")
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, dest)
        else:
            _link_no_clobber(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: bytes | str, *, overwrite: bool = False) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` atomically; see the module doc."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def check_new_output(path: str | os.PathLike, overwrite: bool, flag: str) -> None:
    """Before any work: ``FileExistsError`` naming ``flag`` when ``path`` exists and not
    ``overwrite``, or when its folder is a file."""
    dest = Path(path)
    if dest.is_dir():
        raise FileExistsError(f"{flag}={os.fspath(dest)!r} is a directory; expected a file path")
    if dest.exists() and not overwrite:
        raise FileExistsError(
            f"{flag}={os.fspath(dest)!r} exists; refusing to overwrite it (pass --overwrite "
            "to replace it, or choose another path)"
        )
    for parent in dest.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileExistsError(f"{flag}: {os.fspath(parent)!r} is a file, not a folder")
            break


def write_json(path: str | os.PathLike, payload: Any, *, overwrite: bool = False) -> Path:
    """``payload`` as indented JSON at ``path`` (its folder created), via :func:`atomic_write`:
    refuses an existing file unless ``overwrite``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return atomic_write(path, json.dumps(payload, indent=2) + "\n", overwrite=overwrite)

"""One temporary folder per browser tab, holding what the tab sent and what it gets back.

A tab's folder is ``<root>/sessions/<session id>``; :meth:`Sessions.close` removes it when the
tab closes, :meth:`Sessions.close_all` removes the root when the server stops. Every support the
page receives is written there as PNGs (image, fg, bg), so a result can be reproduced with
:func:`panet_jax.predict` on exactly those files.

Gradio keeps its own copies of a tab's files in its cache (``<root>/gradio``: uploads, and
copies of the files it serves), shared between tabs by content. :meth:`Sessions.track` records
the ones a tab uploaded, sent with a click or was served; closing the tab deletes each of them
that no other open tab has used and that nobody uploaded again since (a newer upload of the
same content has a newer change time). A tab's event that runs after it closed cleans up too.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from panet_jax.evaluation import overlays as visualize

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
CLOSED_REMEMBERED = 1000  # closed tabs whose late events (an upload's) still clean up
PREVIEW_BG_LABEL = 4  # visualize palette index of the background in a support preview (blue)


@dataclasses.dataclass(frozen=True)
class Support:
    """One annotated support as written to its session folder (``bool`` masks as 0/255 PNG)."""

    class_name: str
    kind: str
    image: Path
    fg: Path
    bg: Path
    preview: Path


@dataclasses.dataclass(frozen=True)
class _Use:
    """When a tab last used a cached file, and whether it was served (made after the click)."""

    time: float
    served: bool


class Sessions:
    """The per-tab folders under one root (a fresh temporary folder by default) and the
    Gradio cache files each tab used."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="panet_app_") if root is None else root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache = self.root / "gradio"  # GRADIO_TEMP_DIR (experiments/app.py sets it)
        self._used: dict[str, dict[Path, _Use]] = {}
        self._closed: collections.deque[str] = collections.deque(maxlen=CLOSED_REMEMBERED)
        self._lock = threading.Lock()

    def track(self, session_id: str, paths: Iterable[str | Path], served: bool = False) -> None:
        """Record that the tab used these Gradio cache files: received them with a click, or
        (``served``) will be served them. Paths outside the cache are ignored."""
        now = time.time()
        cache = self.cache.resolve()
        with self._lock:
            used = self._used.setdefault(session_id, {})
            for p in paths:
                path = Path(p).resolve()
                if path.is_relative_to(cache) and path != cache:
                    used[path] = _Use(now, served or (path in used and used[path].served))
            late = session_id in self._closed  # an event that ran after its tab closed
        if late:
            self.close(session_id)

    def folder(self, session_id: str) -> Path:
        """The tab's folder (created on first use)."""
        if not _SESSION_ID.match(session_id or ""):
            raise ValueError(f"invalid session id {session_id!r}")
        path = self.root / "sessions" / session_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self, session_id: str) -> None:
        """Delete the cache files only this tab used, then the tab's folder."""
        with self._lock:
            used = self._used.pop(session_id, {})
            others = {p for files in self._used.values() for p in files}
            self._closed.append(session_id)
        for path, use in used.items():
            if path not in others:
                _delete_cached(path, use)
        if _SESSION_ID.match(session_id or ""):
            shutil.rmtree(self.root / "sessions" / session_id, ignore_errors=True)

    def close_all(self) -> None:
        """Delete the root folder (server stop)."""
        shutil.rmtree(self.root, ignore_errors=True)


def _delete_cached(path: Path, use: _Use) -> None:
    """Delete a cache file (and its then empty content-hash folder) unless it was uploaded
    again after ``use``: a received file whose change time is later is another tab's upload."""
    try:
        if not use.served and os.stat(path).st_ctime > use.time:
            return
        path.unlink()
        path.parent.rmdir()  # fails while it holds other files: kept
    except OSError:
        pass


def save_support(
    folder: Path, class_name: str, kind: str, image: np.ndarray, fg: np.ndarray, bg: np.ndarray
) -> Support:
    """Write one support (``image uint8 [H, W, 3]``, ``fg`` / ``bg`` ``bool [H, W]``) and a
    preview (fg in the class colour, bg in blue) to a new numbered folder under ``folder``."""
    supports = folder / "supports"
    supports.mkdir(exist_ok=True)
    index = sum(1 for _ in supports.iterdir())
    d = supports / f"{index:03d}"
    d.mkdir()
    paths = {k: d / f"{k}.png" for k in ("image", "fg", "bg", "preview")}
    visualize.save_png(image, paths["image"])
    visualize.save_png(fg.astype(np.uint8) * np.uint8(255), paths["fg"])
    visualize.save_png(bg.astype(np.uint8) * np.uint8(255), paths["bg"])
    labels = np.where(fg, 1, np.where(bg, PREVIEW_BG_LABEL, 0))
    visualize.save_png(visualize.overlay(image, labels, 0.45), paths["preview"])
    return Support(class_name, kind, **paths)

"""One temporary folder per browser tab, holding what the tab sent and what it gets back.

A tab's folder is ``<root>/sessions/<session id>``; :meth:`Sessions.close` removes it when the
tab closes, :meth:`Sessions.close_all` removes the root when the server stops. Every support the
page receives is written there as PNGs (image, fg, bg), so a result can be reproduced with
:func:`panet_jax.predict` on exactly those files.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from panet_jax.evaluation import overlays as visualize

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
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


class Sessions:
    """The per-tab folders under one root (a fresh temporary folder by default)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="panet_app_") if root is None else root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, session_id: str) -> Path:
        """The tab's folder (created on first use)."""
        if not _SESSION_ID.match(session_id or ""):
            raise ValueError(f"invalid session id {session_id!r}")
        path = self.root / "sessions" / session_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self, session_id: str) -> None:
        """Delete the tab's folder and everything in it."""
        if _SESSION_ID.match(session_id or ""):
            shutil.rmtree(self.root / "sessions" / session_id, ignore_errors=True)

    def close_all(self) -> None:
        """Delete the root folder (server stop)."""
        shutil.rmtree(self.root, ignore_errors=True)


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

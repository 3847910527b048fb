"""panet_jax.files: atomic, no-clobber writes."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from panet_jax import files
from panet_jax.evaluation import overlays


def test_atomic_write_keeps_the_old_file_on_a_failed_write(tmp_path, monkeypatch):
    target = tmp_path / "overlay.png"
    target.write_bytes(b"the user's earlier result")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        overlays.save_png(np.zeros((4, 4, 3), np.uint8), target, overwrite=True)
    assert target.read_bytes() == b"the user's earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.png"]  # no temporary left


def test_atomic_write_refuses_to_clobber_and_sets_plain_permissions(tmp_path):
    path = files.atomic_write(tmp_path / "results.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        files.atomic_write(path, "{'other': 1}")
    assert path.read_text() == "{}"

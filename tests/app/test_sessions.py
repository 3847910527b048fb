"""The per-tab folders and the Gradio cache files a closing tab takes with it."""

from __future__ import annotations

import os
import time

from panet_jax.app.sessions import Sessions


def _cached(sessions: Sessions, digest: str, name: str, data: bytes = b"x"):
    """A file as Gradio stores it: ``<cache>/<content hash>/<name>``."""
    path = sessions.cache / digest / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_closing_tab_deletes_its_folder_and_the_cache_files_only_it_used(tmp_path):
    sessions = Sessions(tmp_path / "app")
    shared = _cached(sessions, "aa", "support.png")
    own = _cached(sessions, "bb", "query.jpg")
    served = _cached(sessions, "cc", "query_object_overlay.png")
    outside = tmp_path / "user.png"
    outside.write_bytes(b"mine")
    folder = sessions.folder("tab1")
    sessions.track("tab1", [shared, own, outside])
    sessions.track("tab1", [served], served=True)
    sessions.track("tab2", [shared])
    sessions.close("tab1")
    assert not folder.exists() and not own.exists() and not own.parent.exists()
    assert not served.exists()
    assert shared.exists() and outside.exists()  # tab2 still uses it; not the cache's
    sessions.close("tab2")
    assert not shared.exists() and not shared.parent.exists()
    assert sessions.cache.exists()


def test_an_upload_made_again_after_the_tab_used_it_is_kept(tmp_path):
    """Gradio stores equal uploads at one path: a newer upload (another tab's, not yet used in
    a click) has a later change time and survives the first tab's close."""
    sessions = Sessions(tmp_path / "app")
    upload = _cached(sessions, "aa", "support.png")
    result = _cached(sessions, "bb", "mask.png")
    neighbour = _cached(sessions, "aa", "other.png")  # the hash folder keeps other files
    sessions.track("tab1", [upload])
    sessions.track("tab1", [result], served=True)
    time.sleep(0.05)
    staged = upload.with_name(".support.png.tmp")
    staged.write_bytes(b"x")
    os.replace(staged, upload)  # how an upload lands: a new file renamed into place
    os.utime(result)  # a served copy is made after the click: its time does not count
    sessions.close("tab1")
    assert upload.exists() and not result.exists() and neighbour.exists()


def test_an_upload_event_that_runs_after_its_tab_closed_still_cleans_up(tmp_path):
    sessions = Sessions(tmp_path / "app")
    late = _cached(sessions, "aa", "abandoned.png")
    shared = _cached(sessions, "bb", "query.jpg")
    sessions.track("tab2", [shared])
    sessions.close("tab1")
    sessions.track("tab1", [late, shared])  # the tab's queued upload event, run after it closed
    assert not late.exists() and shared.exists()


def test_closing_an_unknown_or_malformed_session_is_harmless(tmp_path):
    sessions = Sessions(tmp_path / "app")
    kept = _cached(sessions, "aa", "a.png")
    for session in ("never-seen", "../..", ""):
        sessions.close(session)
    assert kept.exists()
    sessions.close_all()
    assert not (tmp_path / "app").exists()

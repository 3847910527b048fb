"""Preparation of any dataset: leftovers of an interrupted run are removed."""

from __future__ import annotations

from pathlib import Path

from panet_jax.data import builders


def test_leftovers_of_an_interrupted_preparation_are_removed(tmp_path, caplog):
    builder = builders.get_builder("synthetic_fss", data_dir=tmp_path, config="tiny")
    version = Path(builder.data_path)
    incomplete = version.parent / f"incomplete.ABC123_{version.name}"
    staging = tmp_path / ".staging-synthetic_fss-xyz"
    for d in (incomplete, staging):
        (d / "junk").mkdir(parents=True)
    unrelated = tmp_path / ".staging-coco20i-abc"  # another dataset's: not ours to remove
    unrelated.mkdir()
    builders.prepare("synthetic_fss", data_dir=tmp_path, config="tiny")
    assert not incomplete.exists() and not staging.exists() and unrelated.exists()
    assert "interrupted preparation" in caplog.text

"""A folder dataset's name, and which classes its episodes use, from its prepared metadata
(pure Python).

A folder prepared with a class split (``metadata['split_classes']``: the user's lists or a
seeded split) trains on the ``train`` split's classes and tests on the ``test`` split's
(``config.eval.split='val'``: the val classes); ``config.data.fold`` must be 0. A folder
prepared with folds (``metadata['folds']``: each fold's test classes) has one TFDS split,
``images``: fold ``f`` tests ``folds[f]`` and trains on every other class, as the benchmarks'
folds do. See :mod:`panet_jax.data.builders.folder_split`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a leaf module: the builders import its names too
    from panet_jax.data.sampler import EpisodeConfig

ALL_SPLIT = "images"  # ("all" is reserved by TFDS)


def dataset_name(path: str | os.PathLike) -> str:
    """The builder config name of a folder: its base name, lower case, runs of characters
    other than ``a-z0-9`` as ``_`` (``'/data/My Pets'`` -> ``'my_pets'``)."""
    base = os.path.basename(os.path.abspath(os.path.expanduser(os.fspath(path))).rstrip(os.sep))
    name = re.sub(r"[^a-z0-9]+", "_", base.lower()).strip("_")
    if not name:
        raise ValueError(f"cannot derive a dataset name from {path!r}; pass --builder_config")
    return name


def check_name(name: str) -> str:
    """``name`` if it is a valid dataset name (``a-z0-9_``, starting with a letter or digit)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", name or ""):
        raise ValueError(
            f"folder dataset name {name!r}: expected lower-case letters, digits "
            "and '_' (e.g. 'my_pets')"
        )
    return name


def resolve(cfg: EpisodeConfig, metadata: Mapping[str, Any]) -> EpisodeConfig:
    """``cfg`` with the TFDS split of a folds dataset (``images``) unless one was given;
    ``ValueError`` for a fold the prepared dataset does not have."""
    fold_lists = metadata.get("folds")
    if fold_lists is None:
        if cfg.fold != 0:
            raise ValueError(
                f"fold {cfg.fold}: this folder dataset was prepared with a class split "
                f"({metadata.get('class_split_source', 'train/val/test')}), so only fold 0 "
                "exists; prepare it with --folds=N for N folds"
            )
        return cfg
    if not 0 <= cfg.fold < len(fold_lists):
        raise ValueError(
            f"fold {cfg.fold}: this folder dataset was prepared with {len(fold_lists)} folds "
            f"(0..{len(fold_lists) - 1})"
        )
    return cfg if cfg.split else dataclasses.replace(cfg, split=ALL_SPLIT)


def pool(cfg: EpisodeConfig, metadata: Mapping[str, Any]) -> list[int]:
    """The class ids of ``cfg``'s episodes (training or test classes of its fold / split)."""
    fold_lists = metadata.get("folds")
    if fold_lists is not None:
        test = [int(c) for c in fold_lists[cfg.fold]]
        if not cfg.train:
            return test
        return [c for block in fold_lists for c in map(int, block) if c not in test]
    split = cfg.resolved_split
    classes = metadata.get("split_classes", {}).get(split)
    if not classes:
        raise ValueError(
            f"split {split!r} of this folder dataset has no classes (splits with classes: "
            f"{sorted(metadata.get('split_classes', {}))})"
        )
    return [int(c) for c in classes]


def report_info(builder_name: str, metadata: Mapping[str, Any]) -> dict[str, str]:
    """What an evaluation report says about the dataset: its name and class split."""
    return {
        "dataset_name": builder_name,
        "class_split": str(metadata.get("class_split_source", "")),
    }

"""``folder``: the user's own folder of images and masks as a few-shot segmentation dataset.

Each folder is its own builder config, named after the folder (:func:`dataset_name`:
``/data/My Pets`` -> ``my_pets``) or by ``--builder_config``, so it lives in
``<data_dir>/folder/<name>/`` and two folders never overwrite each other (preparing a second
folder under a name that is taken fails and names the folder that holds it).

Layouts and file checks: :mod:`panet_jax.data.builders.folder_files`; class splits and folds:
:mod:`panet_jax.data.builders.folder_split`. The files are checked first (every image and
mask decoded, in parallel, with a progress bar: rate and ETA), so a bad file stops the run
before anything is written; then the splits are written (decoded again, in parallel).

**Class ids** are 1-based in class order (sorted class folder names; label maps: the values of
``classes.txt`` in increasing order), classes without a usable image left out (with
``skip_bad_files``; otherwise an empty class is an error). ``metadata['class_names'][c - 1]``
names class ``c``. **Masks**: class folders are stored binary (``mask_encoding='binary'``,
the class is the example's single ``classes`` entry, as for FSS-1000); label maps store the
class ids (0 background, 255 ignore). ``instances`` is all zero, ``scribble`` all 255.
Example ids are ``<class>/<stem>`` (class folders) or ``<stem>`` (label maps).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from panet_jax.data import folds
from panet_jax.data.builders import common, folder_split
from panet_jax.data.builders.folder_files import (
    IGNORE_VALUE,
    BadFile,
    Listing,
    Pair,
    list_folder,
    read_pair,
)
from panet_jax.data.folder_classes import check_name, dataset_name  # noqa: F401 (API)

MAX_CLASSES = folds.NUM_CLASSES["folder"]  # class ids 1..MAX_CLASSES
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
log = logging.getLogger(__name__)


def _not_custom_config_notice(record: logging.LogRecord) -> bool:
    """Logging filter: TFDS warns "Using custom data configuration" whenever a folder dataset
    (a config made from its name, by design) is opened; that is no news to the user."""
    return not record.getMessage().startswith("Using custom data configuration: FolderConfig")


logging.getLogger("absl").addFilter(_not_custom_config_notice)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Point --manual_dir at your folder, in one of two layouts:

  class folders:  <dir>/<class>/<image>.jpg  with the binary mask <dir>/<class>/<image>.png
                  (or <dir>/images/<class>/<image>.jpg|png + <dir>/masks/<class>/<image>.png)
  label maps:     <dir>/images/<image>.jpg + <dir>/labels/<image>.png (palette or grey: one
                  value per class, 0 background, 255 ignore) + <dir>/classes.txt
                  ('<value> <name>' per line)

Optional class split: <dir>/train.txt, <dir>/test.txt (and val.txt), one class name per line;
without them a seeded split is made (--split_seed), or folds with --folds=4.
"""


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    """How to read the folder (only preparation reads these; a prepared dataset is opened by
    its name alone)."""

    layout: str = "auto"  # 'auto' | 'class_folders' | 'label_maps'
    folds: int = 0  # 0: class split from lists or seeded; N >= 2: N folds
    split_seed: int = 0
    skip_bad_files: bool = False
    workers: int = DEFAULT_WORKERS


def _progress(items: Iterable, total: int, desc: str) -> Iterator:
    """``items`` with a progress bar on stderr (count, rate, ETA)."""
    yield from tqdm(
        items,
        total=total,
        desc=desc,
        unit="img",
        file=sys.stderr,
        mininterval=5.0,
        smoothing=0.1,
        dynamic_ncols=True,
    )


@dataclasses.dataclass
class _Scan:
    """The usable pairs, what each shows (class names), and the skipped files."""

    pairs: list[Pair]
    shows: list[tuple[str, ...]]
    skipped: list[BadFile]
    empty_masks: list[str]


def _skip_or_raise(bad: BadFile, cfg: FolderConfig, skipped: list[BadFile]) -> None:
    if not cfg.skip_bad_files:
        raise ValueError(
            f"{bad.path}: {bad.reason} (fix it or remove it, or pass "
            "--skip_bad_files to leave such files out)"
        ) from bad
    skipped.append(bad)


def scan(listing: Listing, cfg: FolderConfig) -> _Scan:
    """Decode every pair (in parallel): the classes each one shows; bad files raised or
    skipped (``cfg.skip_bad_files``)."""
    skipped: list[BadFile] = []
    for bad in listing.bad:
        _skip_or_raise(bad, cfg, skipped)
    values = listing.class_values
    name_of = dict(zip(values, listing.class_names, strict=True)) if values else {}

    def check(pair: Pair) -> tuple[str, ...] | BadFile:
        try:
            _, mask = read_pair(pair, values)
        except BadFile as bad:
            return bad
        if values is None:
            return (pair.class_name,) if mask.any() else ()
        return tuple(name_of[int(v)] for v in np.unique(mask) if int(v) in name_of)

    out = _Scan([], [], skipped, [])
    results = common.ordered_map(check, listing.pairs, cfg.workers)
    for pair, shown in zip(
        listing.pairs, _progress(results, len(listing.pairs), "checking"), strict=True
    ):
        if isinstance(shown, BadFile):
            _skip_or_raise(shown, cfg, skipped)
            continue
        if not shown:
            out.empty_masks.append(pair.image_id)
            if pair.class_name is None:
                continue  # a label map of background only shows no class
            shown = (pair.class_name,)
        out.pairs.append(pair)
        out.shows.append(shown)
    return out


def kept_classes(listing: Listing, result: _Scan, cfg: FolderConfig) -> list[str]:
    """The classes with at least one usable image (an empty class is an error unless
    ``skip_bad_files``), in id order."""
    counts = collections.Counter(n for shown in result.shows for n in shown)
    if listing.class_values is None:  # class folders: an all-background mask still counts
        counts.update(
            p.class_name for p, s in zip(result.pairs, result.shows, strict=True) if not s
        )
    empty = [n for n in listing.class_names if not counts[n]]
    if empty and not cfg.skip_bad_files:
        where = "its folder has no usable image/mask pair"
        if listing.class_values:
            where = "no image shows it in " + os.path.join(listing.root, "labels")
        raise ValueError(
            f"class {empty[0]!r} is empty: {where} (remove it, or pass "
            "--skip_bad_files to leave empty classes out)"
        )
    if empty:
        log.warning("folder: %d empty classes left out: %s", len(empty), empty[:10])
    kept = [n for n in listing.class_names if counts[n]]
    small = [n for n in kept if counts[n] < 2]
    if small:
        log.warning(
            "folder: classes with a single image cannot make 1-shot episodes: %s", small[:10]
        )
    if len(kept) > MAX_CLASSES:
        raise ValueError(f"{listing.root} has {len(kept)} classes; at most {MAX_CLASSES}")
    return kept


def _label_lut(listing: Listing, ids: dict[str, int]) -> np.ndarray | None:
    """Label maps: raw mask value -> class id (255 kept; a left-out class is background)."""
    if listing.class_values is None:
        return None
    lut = np.zeros(256, np.uint8)
    lut[IGNORE_VALUE] = IGNORE_VALUE
    for value, name in zip(listing.class_values, listing.class_names, strict=True):
        lut[value] = ids.get(name, 0)
    return lut


class Folder(common.ProjectBuilder):
    """A user's folder of images and masks; splits train / val / test, or ``images`` (folds)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    @classmethod
    def config_from_name(cls, name: str) -> FolderConfig:
        """The config that opens the prepared folder dataset ``name``."""
        return FolderConfig(name=check_name(name), description="a user's folder")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        cfg: FolderConfig = self.builder_config
        root = os.path.abspath(os.fspath(dl_manager.manual_dir))
        listing = list_folder(root, cfg.layout)
        result = scan(listing, cfg)
        names = kept_classes(listing, result, cfg)
        split = folder_split.choose(root, names, cfg.folds, cfg.split_seed)
        self._store_metadata(listing, result, names, split)
        ids = {n: i + 1 for i, n in enumerate(names)}
        groups = (
            {folder_split.ALL_SPLIT: split.used()}
            if split.folds is not None
            else {s: set(v) for s, v in (split.splits or {}).items() if v}
        )
        lut = _label_lut(listing, ids)
        pairs = {
            s: [p for p, shown in zip(result.pairs, result.shows, strict=True) if set(shown) & w]
            for s, w in groups.items()
        }
        return {
            s: self._generate_examples(s, pairs[s], ids, listing.class_values, lut) for s in groups
        }

    def _store_metadata(
        self, listing: Listing, result: _Scan, names: list[str], split: folder_split.FolderSplit
    ) -> None:
        ids = {n: i + 1 for i, n in enumerate(names)}
        meta = self.info.metadata
        meta["mask_encoding"] = "binary" if listing.class_values is None else "labels"
        meta["num_classes"] = len(names)
        meta["class_names"] = names
        meta["layout"] = listing.layout
        meta["source"] = listing.root
        meta["class_split_kind"] = split.kind
        meta["class_split_source"] = split.description
        meta["split_seed"] = self.builder_config.split_seed
        if split.folds is not None:
            meta["folds"] = [[ids[n] for n in block] for block in split.folds]
        else:
            meta["split_classes"] = {
                s: [ids[n] for n in v] for s, v in (split.splits or {}).items() if v
            }
        meta["skipped_files"] = [f"{b.path}: {b.reason}" for b in result.skipped]
        meta["empty_masks"] = result.empty_masks
        if result.skipped:
            log.warning(
                "folder: %d bad files skipped (--skip_bad_files), e.g. %s",
                len(result.skipped),
                meta["skipped_files"][:3],
            )
        log.info(
            "folder %s: %d classes, %s", self.builder_config.name, len(names), split.description
        )

    def _generate_examples(
        self,
        split: str,
        pairs: list[Pair],
        ids: dict[str, int],
        values: list[int] | None,
        lut: np.ndarray | None,
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        def load(pair: Pair) -> dict[str, Any]:
            image, mask = read_pair(pair, values)
            if lut is None:  # class folders: binary mask, the class in `classes`
                example = common.make_example(image_id=pair.image_id, image=image, mask=mask)
                example["classes"] = np.asarray([ids[pair.class_name]], np.int32)
                return example
            return common.make_example(image_id=pair.image_id, image=image, mask=lut[mask])

        index = common.IndexRecorder()
        examples = common.ordered_map(load, pairs, self.builder_config.workers)
        for i, example in enumerate(_progress(examples, len(pairs), f"writing {split}")):
            index.add(example)
            yield i, example
        common.store_split_index(self, len(ids), split, index.to_json())


def summary(builder: tfds.core.DatasetBuilder) -> list[str]:
    """What a prepared folder dataset holds, in a few lines: its source, class split and the
    classes of each split or fold, skipped files."""
    meta = builder.info.metadata or {}
    names = meta.get("class_names", [])

    def named(ids: list[int]) -> str:
        shown = ", ".join(names[i - 1] for i in ids[:12])
        return shown + (f", ... ({len(ids)} classes)" if len(ids) > 12 else "")

    lines = [f"from {meta.get('source')} ({meta.get('layout')}), {len(names)} classes",
             f"class split: {meta.get('class_split_source')}"]  # fmt: skip
    for split, ids in meta.get("split_classes", {}).items():
        lines.append(f"{split} classes: {named(ids)}")
    for fold, ids in enumerate(meta.get("folds", [])):
        lines.append(f"fold {fold} test classes: {named(ids)}")
    if meta.get("skipped_files"):
        lines.append(f"{len(meta['skipped_files'])} bad files skipped, e.g. "
                     f"{meta['skipped_files'][0]}")  # fmt: skip
    return lines

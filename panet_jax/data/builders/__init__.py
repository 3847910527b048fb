"""TFDS builders of the few-shot segmentation datasets, and how to prepare / open them.

=================  ======================  ==============================================
builder name       episode ``dataset``     source
=================  ======================  ==============================================
``pascal_voc_aug`` ``pascal5i``            VOC2012 + SBD masks in ``manual_dir``
``coco20i``        ``coco20i``             COCO 2014 json + images in ``manual_dir``
``synthetic_fss``  ``synthetic``           generated locally (no ``manual_dir``)
``fss1000``        ``fss1000``             FSS-1000 class folders in ``manual_dir``
``folder``         ``folder``              the user's folder in ``manual_dir``; one builder
                                           config per folder (:mod:`.folder`)
=================  ======================  ==============================================

All are written as ``array_record`` (random access through ``builder.as_data_source``).
The builders are instantiated directly (never through ``tfds.builder``), so no registry or GCS
look-up happens.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

import tensorflow_datasets as tfds

from panet_jax.data.builders.coco import Coco20i
from panet_jax.data.builders.folder import Folder
from panet_jax.data.builders.fss1000 import Fss1000
from panet_jax.data.builders.synthetic import SyntheticFss
from panet_jax.data.builders.voc import PascalVocAug
from panet_jax.runtime import tf_support  # noqa: F401 (hides the GPUs from TensorFlow)

BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "pascal_voc_aug": PascalVocAug,
    "coco20i": Coco20i,
    "synthetic_fss": SyntheticFss,
    "fss1000": Fss1000,
    "folder": Folder,
}
# EpisodeConfig.dataset -> builder name
BUILDER_OF_DATASET = {
    "pascal5i": "pascal_voc_aug",
    "coco20i": "coco20i",
    "synthetic": "synthetic_fss",
    "fss1000": "fss1000",
    "folder": "folder",
}
DATASET_OF_BUILDER = {builder: dataset for dataset, builder in BUILDER_OF_DATASET.items()}
FILE_FORMAT = "array_record"
ConfigArg = str | tfds.core.BuilderConfig | None  # a config name, or a config (folder)
log = logging.getLogger(__name__)

__all__ = [
    "BUILDERS",
    "BUILDER_OF_DATASET",
    "DATASET_OF_BUILDER",
    "Coco20i",
    "Folder",
    "Fss1000",
    "PascalVocAug",
    "SyntheticFss",
    "get_builder",
    "load_prepared",
    "prepare",
    "prepare_command",
]


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    if data_dir:
        return os.fspath(data_dir)
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def get_builder(
    name: str, *, data_dir: str | os.PathLike | None,
    config: ConfigArg = None,
) -> tfds.core.GeneratorBasedBuilder:  # fmt: skip
    """The builder ``name`` rooted at ``data_dir`` (``None``/'' -> ``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``), prepared or not. ``folder`` makes its config from a name."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset builder {name!r}; expected one of {sorted(BUILDERS)}")
    if name == "folder" and not config:
        raise ValueError(
            "the folder dataset needs its name: --builder_config=<name> (prepare_data.py: "
            "default the folder's name), config.data.builder_config, or configs/folder.py:path="
        )
    if name == "folder" and isinstance(config, str):
        config = Folder.config_from_name(config)
    kwargs = {"config": config} if config else {}
    return BUILDERS[name](data_dir=_resolve_data_dir(data_dir), file_format=FILE_FORMAT, **kwargs)


def prepare_command(name: str, data_dir: str | None, config: ConfigArg = None) -> str:
    """The shell command that prepares ``name`` (used in error messages)."""
    cmd = f"python experiments/prepare_data.py --dataset={name}"
    if name != "synthetic_fss":
        cmd += " --manual_dir=<folder with the raw files>"
    if config:
        cmd += f" --builder_config={getattr(config, 'name', config)}"
    return cmd + f" --data_dir={data_dir or '<data_dir>'}"


def load_prepared(
    name: str, *, data_dir: str | os.PathLike | None, config: ConfigArg = None
) -> tfds.core.GeneratorBasedBuilder:
    """The prepared builder, or ``FileNotFoundError`` saying how to prepare it."""
    builder = get_builder(name, data_dir=data_dir, config=config)
    if not builder.is_prepared():
        config_name = builder.builder_config.name if builder.builder_config else None
        msg = (
            f"dataset {name!r} (config {config_name!r}) is not prepared under "
            f"data_dir={_resolve_data_dir(data_dir)!r} "
            f"(looked for {os.fspath(builder.data_path)}). Prepare it with:\n  "
            + prepare_command(name, _resolve_data_dir(data_dir), config)
        )
        if BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS:
            msg += "\n" + BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS
        raise FileNotFoundError(msg)
    return builder


def _download_and_prepare(
    builder: tfds.core.DatasetBuilder, manual_dir: str | os.PathLike | None
) -> None:
    """``download_and_prepare`` without GCS and without leaving a ``downloads/`` folder; TFDS's
    bare ``AssertionError`` for a split without examples becomes a ``ValueError`` naming it."""
    config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir else None,
        try_download_gcs=False,
    )
    with tempfile.TemporaryDirectory(prefix="tfds-downloads-") as download_dir:
        try:
            builder.download_and_prepare(
                download_dir=download_dir, download_config=config, file_format=FILE_FORMAT
            )
        except AssertionError as e:  # TFDS: "No examples were yielded."
            raise ValueError(
                f"{builder.name}: a split has no examples ({e}); check the image lists in "
                f"{os.fspath(manual_dir) if manual_dir else 'the manual_dir'}"
            ) from e


@contextlib.contextmanager
def _preparation_lock(data_dir: str, name: str) -> Iterator[None]:
    """One preparation of ``name`` per ``data_dir`` at a time (an advisory ``flock`` on a lock
    file next to the datasets, removed when done), so that leftovers found under it are never
    another run's."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, f".{name}.prepare.lock")
    while True:
        f = open(path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise FileExistsError(
                f"another preparation of {name} under {data_dir!r} is running (lock {path!r}); "
                "wait for it to finish"
            ) from None
        try:  # the file we locked may have been removed by the previous holder: retry
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        yield
    finally:
        os.unlink(path)  # before unlocking: a waiting process then retries on a new file
        f.close()


def _remove_leftovers(builder: tfds.core.DatasetBuilder, data_dir: str, name: str) -> None:
    """Folders an interrupted preparation of ``name`` left behind (TFDS ``incomplete.*``
    folders, our ``.staging-<name>-*`` folders and ``.old`` backups); only ever called under
    :func:`_preparation_lock`, so none of them belongs to a running preparation."""
    version_dir = os.fspath(builder.data_path)
    parent, version = os.path.split(version_dir.rstrip(os.sep))
    leftovers = glob.glob(os.path.join(parent, f"incomplete.*_{version}"))
    leftovers += glob.glob(os.path.join(data_dir, f".staging-{name}-*"))
    leftovers += [version_dir + ".old"] if os.path.isdir(version_dir + ".old") else []
    for path in leftovers:
        log.warning("removing %s, left by an interrupted preparation of %s", path, name)
        shutil.rmtree(path, ignore_errors=True)


def prepare(
    name: str,
    *,
    data_dir: str | os.PathLike | None,
    manual_dir: str | os.PathLike | None = None,
    config: ConfigArg = None,
    overwrite: bool = False,
) -> tfds.core.GeneratorBasedBuilder:
    """Prepare dataset ``name`` under ``data_dir``; return the prepared builder.

    Refuses (``FileExistsError``) when the dataset is already prepared, unless ``overwrite``.
    A failed preparation leaves ``data_dir`` as it was: TFDS writes into a temporary folder that
    it renames at the end, and an overwrite is first prepared in a staging folder next to the
    old data, which is only replaced once the new data are complete. Leftovers of an earlier,
    interrupted preparation are removed first (one preparation per dataset at a time).
    """
    data_dir = _resolve_data_dir(data_dir)
    builder = get_builder(name, data_dir=data_dir, config=config)
    if BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS and not manual_dir:
        raise ValueError(
            f"{name} needs --manual_dir with the raw files.\n"
            + BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS
        )
    if manual_dir and not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir does not exist: {manual_dir}")
    if manual_dir and not os.listdir(manual_dir):
        raise FileNotFoundError(
            f"manual_dir {manual_dir} is empty.\n" + BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS
        )
    if builder.is_prepared() and not overwrite:
        raise FileExistsError(
            f"{name} is already prepared at {os.fspath(builder.data_path)}"
            f"{_source_note(builder, manual_dir)}; pass overwrite=True (--overwrite) to rebuild it"
        )
    with _preparation_lock(data_dir, name):
        _remove_leftovers(builder, data_dir, name)
        if not builder.is_prepared():
            _download_and_prepare(builder, manual_dir)
        else:
            _prepare_replacing(builder, name, data_dir, manual_dir, config)
    return get_builder(name, data_dir=data_dir, config=config)


def _source_note(builder: tfds.core.DatasetBuilder, manual_dir: str | os.PathLike | None) -> str:
    """For a folder dataset prepared from another folder: which one, and how to keep both."""
    source = (builder.info.metadata or {}).get("source")
    if not source or not manual_dir or os.path.abspath(manual_dir) == source:
        return ""
    return (f" from another folder, {source} (prepare {os.fspath(manual_dir)} beside it with "
            "--builder_config=<another name>)")  # fmt: skip


def _prepare_replacing(
    builder: tfds.core.DatasetBuilder, name: str, data_dir: str,
    manual_dir: str | os.PathLike | None, config: ConfigArg,
) -> None:  # fmt: skip
    """Prepare into a staging folder, then swap it in for the old dataset."""
    staging = tempfile.mkdtemp(prefix=f".staging-{name}-", dir=data_dir)
    try:
        staged = get_builder(name, data_dir=staging, config=config)
        _download_and_prepare(staged, manual_dir)
        target = os.fspath(builder.data_path)
        backup = target + ".old"
        os.rename(target, backup)
        os.rename(os.fspath(staged.data_path), target)
        shutil.rmtree(backup)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

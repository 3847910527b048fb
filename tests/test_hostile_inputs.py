"""Careless and hostile input: one clear line naming the file / flag / key, never a traceback,
never garbage with exit status 0, never a lost or half-written file of the user's.

Every command-line case runs the real entry point in a subprocess and checks: a non-zero exit
status, no ``Traceback`` in stderr, an error line of at most a few lines naming what is wrong,
and that the user's files are byte-for-byte unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import data_fixtures as fx
import jax
import numpy as np
import pytest
import train_helpers as h
from PIL import Image

import panet_jax
from panet_jax import checkpointing, files, loading, pretrained, trainer, user_images, visualize
from panet_jax.data import builders

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
# Lines TensorFlow / absl print at start-up on every run, whatever happens afterwards.
STARTUP_NOISE = ("oneDNN custom operations", "All log messages before absl::InitializeLog")


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (what "nothing of the user's changed" means)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _error_lines(stderr: str) -> list[str]:
    return [
        ln for ln in stderr.splitlines()
        if ln.strip() and not any(n in ln for n in STARTUP_NOISE)
        and not ln.startswith(("I1", "I0", "W1", "W0"))  # absl INFO / WARNING log lines
    ]  # fmt: skip


def run_cli(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(EXPERIMENTS / script), *args]
    return subprocess.run(cmd, env=h.subprocess_env(1), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)  # fmt: skip


def assert_clean_failure(proc: subprocess.CompletedProcess, *must_mention: str) -> str:
    """Exit status != 0, no traceback, a short error naming ``must_mention``; returns it."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = _error_lines(proc.stderr)
    assert 1 <= len(lines) <= 6, lines
    text = "\n".join(lines)
    for word in must_mention:
        assert word in text, (word, text)
    return text


# --------------------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic set, a 2-step training run, user images and a support mask."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    builders.prepare("synthetic_fss", data_dir=data, config="tiny")
    wd = root / "wd"
    trainer.train(h.tiny_config(str(data), train__steps=2, train__checkpoint_every=1,
                                train__image_every=0), str(wd))  # fmt: skip
    rng = np.random.default_rng(0)
    user = root / "user"
    user.mkdir()
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:36] = 1
    Image.fromarray(image).save(user / "img.png")
    Image.fromarray(mask * 255).save(user / "mask.png")
    (user / "junk.pth").write_bytes(b"not a torch file")
    (user / "afile").write_text("a file, not a directory")
    return {"root": root, "data": str(data), "wd": wd, "user": user, "image": image, "mask": mask}


# --------------------------------------------------------------------------- 1. no lost file


def test_atomic_write_keeps_the_old_file_on_a_failed_write(tmp_path, monkeypatch):
    target = tmp_path / "overlay.png"
    target.write_bytes(b"the user's earlier result")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        visualize.save_png(np.zeros((4, 4, 3), np.uint8), target, overwrite=True)
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


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tiny tmpfs at ``path`` (root only); skips the test where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_segment_overwrite_on_a_full_disk_keeps_the_old_outputs(world, tmp_path):
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        user = world["user"]
        args = [f"--checkpoint={world['wd']}", f"--support={user / 'img.png'}:{user / 'mask.png'}",
                f"--query={user / 'img.png'}", f"--out_dir={disk}"]  # fmt: skip
        first = run_cli("segment.py", *args)
        assert first.returncode == 0, first.stderr[-3000:]
        before = _digest(disk)
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # fill the disk to the last block
            while os.write(fd, b"x" * 512):
                pass
        os.close(fd)
        before["filler"] = hashlib.sha256(filler.read_bytes()).hexdigest()
        proc = run_cli("segment.py", *args, "--overwrite")
        assert_clean_failure(proc, "no space left")
        assert _digest(disk) == before  # the old mask and overlay are whole, nothing half-written


def test_training_on_a_full_disk_fails_in_one_line_keeping_checkpoints(world, tmp_path):
    with small_tmpfs(tmp_path / "disk", "600k") as disk:
        proc = run_cli("train.py", f"--config={h.RUNLOCAL}", f"--workdir={disk / 'wd'}",
                       f"--config.data.data_dir={world['data']}", "--config.train.steps=8",
                       "--config.train.checkpoint_every=1")  # fmt: skip
        text = assert_clean_failure(proc, "no space left", "checkpoint step")
        assert "kept" in text


# --------------------------------------------------------------------------- 2. no garbage


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(1)
    grey8 = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    loaded = user_images.load_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(loaded, np.stack([grey8] * 3, axis=-1))
    np.testing.assert_array_equal(user_images.load_image(grey8.astype(np.uint16) * 257), loaded)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
        (np.random.default_rng(0).random((8, 8, 3)), r"ambiguous.*value_range"),
        (np.full((8, 8, 3), 300, np.int64), "0..255"),
        (np.zeros((8, 8), bool), "mask, not an image"),
    ],
)
def test_ambiguous_or_broken_image_arrays_are_refused(image, match):
    with pytest.raises(ValueError, match=match):
        user_images.load_image(image, "query_images[0]")


def test_float_images_with_a_stated_range_equal_the_uint8_image():
    rng = np.random.default_rng(2)
    u8 = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(user_images.load_image(u8 / 255.0, value_range=(0, 1)), u8)
    np.testing.assert_array_equal(
        user_images.load_image(u8.astype(float), value_range=(0, 255)), u8
    )


def test_degenerate_masks_are_refused(world):
    v = {"params": {"encoder": jax.tree.map(np.asarray, loading.load_variables(world["wd"])
                                            ["params"]["encoder"])}}  # fmt: skip
    image, mask = world["image"], world["mask"]
    with pytest.raises(ValueError, match=r"whole image.*background"):
        panet_jax.predict(v, image, np.ones_like(mask), image, image_size=(33, 33))
    with pytest.raises(ValueError, match="float mask must hold only 0 and 1"):
        panet_jax.predict(v, image, mask * 0.5, image, image_size=(33, 33))
    with pytest.raises(ValueError, match=r"image_size.*between 16 and 4096"):
        panet_jax.predict(v, image, mask, image, image_size=(1, 1))


# --------------------------------------------------------------------------- 3. no tracebacks


def _cli_cases(world) -> list[tuple[str, list[str], tuple[str, ...]]]:
    user, wd, data = world["user"], world["wd"], world["data"]
    train = [f"--config={h.RUNLOCAL}", f"--config.data.data_dir={data}"]
    evaluate = [*train, f"--checkpoint={wd}"]
    seg = [f"--support={user / 'img.png'}:{user / 'mask.png'}", f"--query={user / 'img.png'}",
           f"--out_dir={world['root'] / 'seg_out'}"]  # fmt: skip
    bad_config = world["root"] / "bad_config.py"
    bad_config.write_text("def get_config(:\n")
    return [
        ("train.py", [*train, f"--workdir={world['root'] / 'n1'}", "--config.train.steps=-3"],
         ("config.train.steps=-3",)),
        ("train.py", [*train, f"--workdir={world['root'] / 'n2'}", "--config.data.fold=7"],
         ("config.data.fold=7",)),
        ("train.py", [*train, f"--workdir={user / 'afile'}"], ("afile", "not a directory")),
        ("train.py", ["--config=configs/nope.py", f"--workdir={world['root'] / 'n3'}"],
         ("nope.py",)),
        ("train.py", [f"--config={bad_config}", f"--workdir={world['root'] / 'n4'}"],
         ("bad_config.py", "line 1")),
        ("train.py", [*train, f"--workdir={wd}", "--config.optim.lr=0.5"],
         ("different config", "optim.lr")),
        ("train.py", [f"--config={h.RUNLOCAL}", f"--workdir={world['root'] / 'n5'}",
                      f"--config.data.data_dir={world['root'] / 'nodata'}",
                      "--config.data.auto_prepare=False"], ("not prepared", "prepare_data.py")),
        ("train.py", [*train, f"--workdir={world['root'] / 'n6'}", "--config.model.encoder=vgg19"],
         ("config.model.encoder='vgg19'", "resnet50")),
        ("train.py", [*train, f"--workdir={world['root'] / 'n7'}",
                      "--config.model.encoder=resnet50", "--config.model.frozen=conv1_1"],
         ("config.model.frozen='conv1_1'", "layer3")),
        ("train.py", [*train, f"--workdir={world['root'] / 'n8'}", "--config.model.frozen=all"],
         ("config.model.frozen='all'", "nothing would train")),
        ("train.py", [*train, f"--workdir={world['root'] / 'n9'}",
                      "--config.model.encoder=resnet50",
                      f"--config.model.pretrained={user / 'junk.pth'}"],
         ("junk.pth",)),
        ("evaluate.py", [*evaluate, "--config.eval.min_object_pixels=-5"],
         ("config.eval.min_object_pixels=-5",)),
        ("evaluate.py", [*evaluate, "--step=99"], ("step 99", "saved steps")),
        ("evaluate.py", [*evaluate, "--config.eval.runs=0"], ("config.eval.runs=0",)),
        ("evaluate.py", [*train, f"--checkpoint={world['root'] / 'missing'}"],
         ("missing", "does not exist")),
        ("segment.py", [f"--checkpoint={user / 'junk.pth'}", *seg], ("junk.pth",)),
        ("segment.py", [f"--checkpoint={user / 'afile'}", *seg], ("afile", "not a weight file")),
        ("segment.py", [f"--checkpoint={wd}", "--image_size=1,1", *seg], ("--image_size",)),
        ("segment.py", [f"--checkpoint={wd}", "--alpha=nan", *seg], ("--alpha",)),
        ("segment.py", [f"--checkpoint={wd / 'checkpoints' / '7'}", *seg], ("7",)),
        ("convert_weights.py", [f"--input={user / 'junk.pth'}", f"--output={user / 'o.npz'}"],
         ("junk.pth",)),
        ("prepare_data.py", ["--dataset=pascal_voc_aug", f"--manual_dir={user}",
                             f"--data_dir={world['root'] / 'voc_out'}"], ("VOC2012",)),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(22))
def test_entry_points_fail_in_one_clear_line(world, case):
    """Each case from scratch: exit != 0, no traceback, the flag / file / key named, and the
    user's files untouched."""
    cases = _cli_cases(world)
    assert len(cases) == 22
    script, args, words = cases[case]
    before = {k: _digest(world[k]) for k in ("wd", "user")}
    assert_clean_failure(run_cli(script, *args), *words)
    assert {k: _digest(world[k]) for k in ("wd", "user")} == before


def test_prepare_data_names_empty_lists_and_unknown_categories(tmp_path):
    tree = fx.write_voc_tree(str(tmp_path / "voc"), n_trainaug=4, n_val=2)
    open(os.path.join(tree.root, "ImageSets", "Segmentation", "val.txt"), "w").close()
    proc = run_cli("prepare_data.py", "--dataset=pascal_voc_aug", f"--manual_dir={tree.manual_dir}",
                   f"--data_dir={tmp_path / 'out'}")  # fmt: skip
    assert_clean_failure(proc, "val.txt", "no image ids")
    coco = fx.write_coco_tree(str(tmp_path / "coco"), n_train=2, n_val=1)
    ann = Path(coco.manual_dir) / "annotations" / "instances_train2014.json"
    ann.write_text(ann.read_text().replace('"category_id": 1,', '"category_id": 999,', 1))
    proc = run_cli("prepare_data.py", "--dataset=coco20i", f"--manual_dir={coco.manual_dir}",
                   f"--data_dir={tmp_path / 'out2'}")  # fmt: skip
    assert_clean_failure(proc, "instances_train2014.json", "999")


@pytest.mark.parametrize("kind", ["pth", "h5", "npz"])
def test_truncated_weight_files_are_named(tmp_path, kind):
    path = tmp_path / f"weights.{kind}"
    if kind == "npz":
        pretrained.save_npz(
            {n: {"kernel": np.zeros(k, np.float32), "bias": np.zeros(b, np.float32)}
             for n, (k, b) in pretrained.vgg16_param_shapes(1 / 16).items()}, path)  # fmt: skip
    elif kind == "h5":
        h5py = pytest.importorskip("h5py")
        with h5py.File(path, "w") as f:
            f.create_dataset("block1_conv1", data=np.zeros(5000))
    else:
        torch = pytest.importorskip("torch")
        torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(pretrained.PretrainedWeightsError, match=r"weights\." + kind):
        pretrained.load_any(path)


# --------------------------------------------------------------------------- 4. damaged steps


def _damage(step_dir: Path) -> None:
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and "METADATA" not in f.name:
            f.write_bytes(f.read_bytes()[:10])


def test_a_damaged_latest_checkpoint(world, tmp_path):
    """Resume falls back to the newest readable step (the damaged one stays on disk); loading
    names the damaged step and the --step to use."""
    wd = tmp_path / "wd"
    config = h.tiny_config(world["data"], train__steps=2, train__checkpoint_every=1,
                           train__image_every=0)  # fmt: skip
    trainer.train(config, str(wd))
    _damage(wd / "checkpoints" / "2")
    with pytest.raises(checkpointing.CheckpointReadError, match=r"step 2.*damaged.*--step=1"):
        loading.load_variables(wd)
    assert loading.load_variables(wd, step=1)["params"]
    config.train.steps = 3
    state, result = trainer.train(config, str(wd))
    assert int(state.step) == 3 and result["step"] == 3
    assert (wd / "checkpoints" / "2").is_dir()  # never deleted


# --------------------------------------------------------------------------- 5. no hang


def test_the_non_finite_stop_always_exits_promptly(world, tmp_path):
    """A diverged run stops with one line and exits; 6 runs, each under a time limit (a
    leaked tf.data iterator with Python map calls could hang the interpreter's exit)."""
    procs = []
    for i in range(6):
        cmd = [
            sys.executable,
            str(EXPERIMENTS / "train.py"),
            f"--config={h.RUNLOCAL}",
            f"--workdir={tmp_path / f'wd{i}'}",
            f"--config.data.data_dir={world['data']}",
            "--config.optim.lr=1e30",
            "--config.train.steps=6",
            "--config.train.log_every=1",
        ]
        procs.append(subprocess.Popen(cmd, env=h.subprocess_env(1), stderr=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, text=True, cwd=REPO))  # fmt: skip
        if len(procs) == 2 or i == 5:  # two at a time on a 2-core machine
            for p in procs:
                start = time.monotonic()
                _, err = p.communicate(timeout=180)
                assert p.returncode == 1 and "non-finite loss" in err, err[-2000:]
                assert "Traceback" not in err
                assert time.monotonic() - start < 180
            procs = []


# --------------------------------------------------------------------------- 6. leftovers


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

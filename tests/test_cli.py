"""Every command as a careless user runs it: one clear line naming the file / flag / key,
never a traceback, never garbage with exit status 0, never a lost or half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import data_fixtures as fx
import pytest
import train_helpers as h
from commands import assert_clean_failure, digest, run_cli, small_tmpfs
from paths import EXPERIMENTS, REPO
from PIL import Image


def test_segment_overwrite_on_a_full_disk_keeps_the_old_outputs(world, tmp_path):
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        user = world["user"]
        args = [f"--checkpoint={world['wd']}", f"--support={user / 'img.png'}:{user / 'mask.png'}",
                f"--query={user / 'img.png'}", f"--out_dir={disk}"]  # fmt: skip
        first = run_cli("segment.py", *args)
        assert first.returncode == 0, first.stderr[-3000:]
        before = digest(disk)
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # fill the disk to the last block
            while os.write(fd, b"x" * 512):
                pass
        os.close(fd)
        before["filler"] = hashlib.sha256(filler.read_bytes()).hexdigest()
        proc = run_cli("segment.py", *args, "--overwrite")
        assert_clean_failure(proc, "no space left")
        assert digest(disk) == before  # the old mask and overlay are whole, nothing half-written


def test_training_on_a_full_disk_fails_in_one_line_keeping_checkpoints(world, tmp_path):
    with small_tmpfs(tmp_path / "disk", "600k") as disk:
        proc = run_cli("train.py", f"--config={h.RUNLOCAL}", f"--workdir={disk / 'wd'}",
                       f"--config.data.data_dir={world['data']}", "--config.train.steps=8",
                       "--config.train.checkpoint_every=1")  # fmt: skip
        text = assert_clean_failure(proc, "no space left", "checkpoint step")
        assert "kept" in text


CASE_IDS = [
    "train-negative-steps",
    "train-fold-out-of-range",
    "train-workdir-is-a-file",
    "train-config-missing",
    "train-config-syntax-error",
    "train-resume-with-another-config",
    "train-data-not-prepared",
    "train-unknown-encoder",
    "train-frozen-layer-of-another-encoder",
    "train-everything-frozen",
    "train-damaged-pretrained-weights",
    "evaluate-negative-min-object-pixels",
    "evaluate-step-not-saved",
    "evaluate-zero-runs",
    "evaluate-missing-checkpoint",
    "segment-damaged-weights",
    "segment-checkpoint-is-a-file",
    "segment-image-size-too-small",
    "segment-alpha-nan",
    "segment-step-not-saved",
    "segment-zero-prototypes",
    "convert-damaged-weights",
    "prepare-voc-without-vocdevkit",
    "train-unknown-config-argument",
    "segment-decompression-bomb-query",
    "segment-query-not-an-image",
    "segment-no-query",
    "compile-empty-topology",
    "compile-unknown-step",
    "compile-json-exists",
    "benchmark-out-exists",
    "benchmark-data-out-exists",
    "benchmark-convs-out-exists",
    "gpu-check-out-exists",
    "convert-output-exists",
    "evaluate-unknown-config-argument",
    "analyze-out-is-a-file",
]


def _bomb_png(folder: Path) -> Path:
    """A 2 KB PNG that decodes to 14000 x 14000 pixels (over PIL's decompression-bomb limit)."""
    path = folder / "bomb.png"
    if not path.exists():
        Image.new("1", (14000, 14000)).save(path, optimize=True)
    return path


def _existing_output(folder: Path) -> Path:
    """A file of the user's that a command is asked to write over."""
    path = folder / "mine.json"
    if not path.exists():
        path.write_text('{"the user\'s": "results"}')
    return path


def _cli_cases(world) -> dict[str, tuple[str, list[str], tuple[str, ...]]]:
    user, wd, data = world["user"], world["wd"], world["data"]
    train = [f"--config={h.RUNLOCAL}", f"--config.data.data_dir={data}"]
    evaluate = [*train, f"--checkpoint={wd}"]
    seg = [f"--support={user / 'img.png'}:{user / 'mask.png'}", f"--query={user / 'img.png'}",
           f"--out_dir={world['root'] / 'seg_out'}"]  # fmt: skip
    bad_config = world["root"] / "bad_config.py"
    bad_config.write_text("def get_config(:\n")
    bomb, mine = _bomb_png(user), _existing_output(user)
    one_query = [f"--support={user / 'img.png'}:{user / 'mask.png'}",
                 f"--out_dir={world['root'] / 'seg_out2'}"]  # fmt: skip
    cases = [
        (
            "train-negative-steps",
            "train.py",
            [*train, f"--workdir={world['root'] / 'n1'}", "--config.train.steps=-3"],
            ("config.train.steps=-3",),
        ),
        (
            "train-fold-out-of-range",
            "train.py",
            [*train, f"--workdir={world['root'] / 'n2'}", "--config.data.fold=7"],
            ("config.data.fold=7",),
        ),
        (
            "train-workdir-is-a-file",
            "train.py",
            [*train, f"--workdir={user / 'afile'}"],
            ("afile", "not a directory"),
        ),
        (
            "train-config-missing",
            "train.py",
            ["--config=configs/nope.py", f"--workdir={world['root'] / 'n3'}"],
            ("nope.py",),
        ),
        (
            "train-config-syntax-error",
            "train.py",
            [f"--config={bad_config}", f"--workdir={world['root'] / 'n4'}"],
            ("bad_config.py", "line 1"),
        ),
        (
            "train-resume-with-another-config",
            "train.py",
            [*train, f"--workdir={wd}", "--config.optim.lr=0.5"],
            ("different config", "optim.lr"),
        ),
        (
            "train-data-not-prepared",
            "train.py",
            [
                f"--config={h.RUNLOCAL}",
                f"--workdir={world['root'] / 'n5'}",
                f"--config.data.data_dir={world['root'] / 'nodata'}",
                "--config.data.auto_prepare=False",
            ],
            ("not prepared", "prepare_data.py"),
        ),
        (
            "train-unknown-encoder",
            "train.py",
            [*train, f"--workdir={world['root'] / 'n6'}", "--config.model.encoder=vgg19"],
            ("config.model.encoder='vgg19'", "resnet50"),
        ),
        (
            "train-frozen-layer-of-another-encoder",
            "train.py",
            [
                *train,
                f"--workdir={world['root'] / 'n7'}",
                "--config.model.encoder=resnet50",
                "--config.model.frozen=conv1_1",
            ],
            ("config.model.frozen='conv1_1'", "layer3"),
        ),
        (
            "train-everything-frozen",
            "train.py",
            [*train, f"--workdir={world['root'] / 'n8'}", "--config.model.frozen=all"],
            ("config.model.frozen='all'", "nothing would train"),
        ),
        (
            "train-damaged-pretrained-weights",
            "train.py",
            [
                *train,
                f"--workdir={world['root'] / 'n9'}",
                "--config.model.encoder=resnet50",
                f"--config.model.pretrained={user / 'junk.pth'}",
            ],
            ("junk.pth",),
        ),
        (
            "evaluate-negative-min-object-pixels",
            "evaluate.py",
            [*evaluate, "--config.eval.min_object_pixels=-5"],
            ("config.eval.min_object_pixels=-5",),
        ),
        (
            "evaluate-step-not-saved",
            "evaluate.py",
            [*evaluate, "--step=99"],
            ("step 99", "saved steps"),
        ),
        (
            "evaluate-zero-runs",
            "evaluate.py",
            [*evaluate, "--config.eval.runs=0"],
            ("config.eval.runs=0",),
        ),
        (
            "evaluate-missing-checkpoint",
            "evaluate.py",
            [*train, f"--checkpoint={world['root'] / 'missing'}"],
            ("missing", "does not exist"),
        ),
        (
            "segment-damaged-weights",
            "segment.py",
            [f"--checkpoint={user / 'junk.pth'}", *seg],
            ("junk.pth",),
        ),
        (
            "segment-checkpoint-is-a-file",
            "segment.py",
            [f"--checkpoint={user / 'afile'}", *seg],
            ("afile", "not a weight file"),
        ),
        (
            "segment-image-size-too-small",
            "segment.py",
            [f"--checkpoint={wd}", "--image_size=1,1", *seg],
            ("--image_size",),
        ),
        (
            "segment-alpha-nan",
            "segment.py",
            [f"--checkpoint={wd}", "--alpha=nan", *seg],
            ("--alpha",),
        ),
        (
            "segment-step-not-saved",
            "segment.py",
            [f"--checkpoint={wd / 'checkpoints' / '7'}", *seg],
            ("7",),
        ),
        (
            "segment-zero-prototypes",
            "segment.py",
            [f"--checkpoint={wd}", "--prototypes_per_class=0", *seg],
            ("--prototypes_per_class",),
        ),
        (
            "convert-damaged-weights",
            "convert_weights.py",
            [f"--input={user / 'junk.pth'}", f"--output={user / 'o.npz'}"],
            ("junk.pth",),
        ),
        (
            "prepare-voc-without-vocdevkit",
            "prepare_data.py",
            [
                "--dataset=pascal_voc_aug",
                f"--manual_dir={user}",
                f"--data_dir={world['root'] / 'voc_out'}",
            ],
            ("VOC2012",),
        ),
        ("train-unknown-config-argument", "train.py",
         [f"--config={h.RUNLOCAL},folds=2", f"--workdir={world['root'] / 'n10'}"],
         ("folds", "expected one of")),
        ("analyze-out-is-a-file", "analyze.py",
         [f"--config={h.RUNLOCAL}", f"--out={user / 'afile'}"], ("afile", "not a directory")),
        ("evaluate-unknown-config-argument", "evaluate.py",
         [f"--config={h.RUNLOCAL},shots=5", f"--checkpoint={wd}"], ("shots", "expected one of")),
        ("segment-decompression-bomb-query", "segment.py",
         [f"--checkpoint={wd}", *one_query, f"--query={bomb}"], ("bomb.png", "too large")),
        ("segment-query-not-an-image", "segment.py",
         [f"--checkpoint={wd}", *one_query, f"--query={user / 'junk.pth'}"], ("junk.pth",)),
        ("segment-no-query", "segment.py", [f"--checkpoint={wd}", *one_query], ("--query",)),
        ("compile-empty-topology", "compile_for.py", [f"--config={h.RUNLOCAL}", "--topology="],
         ("--topology", "empty")),
        ("compile-unknown-step", "compile_for.py",
         [f"--config={h.RUNLOCAL}", "--topology=v5e:2x2", "--steps=train,predict"],
         ("--steps", "'predict'", "train, eval")),
        ("compile-json-exists", "compile_for.py",
         [f"--config={h.RUNLOCAL}", "--topology=v5e:2x2", f"--json={mine}"],
         ("mine.json", "--overwrite")),
        ("benchmark-out-exists", "benchmark.py", [f"--out={mine}"], ("mine.json", "--overwrite")),
        ("benchmark-data-out-exists", "benchmark_data.py",
         [f"--data_dir={world['data']}", f"--out={mine}"], ("mine.json", "--overwrite")),
        ("benchmark-convs-out-exists", "benchmark_convs.py", [f"--out={mine}"],
         ("mine.json", "--overwrite")),
        ("gpu-check-out-exists", "gpu_check.py", ["--allow_cpu", f"--out={mine}"],
         ("mine.json", "--overwrite")),
        ("convert-output-exists", "convert_weights.py",
         [f"--input={user / 'junk.pth'}", f"--output={user / 'o_exists.npz'}"],
         ("o_exists.npz",)),
    ]  # fmt: skip
    (user / "o_exists.npz").write_bytes(b"the user's converted weights")
    return {name: (script, args, words) for name, script, args, words in cases}


@pytest.mark.parametrize("case", CASE_IDS)
def test_entry_points_fail_in_one_clear_line(world, case):
    """Each case from scratch: exit != 0, no traceback, the flag / file / key named, and the
    user's files untouched."""
    cases = _cli_cases(world)
    assert sorted(cases) == sorted(CASE_IDS)
    script, args, words = cases[case]
    before = {k: digest(world[k]) for k in ("wd", "user")}
    assert_clean_failure(run_cli(script, *args), *words)
    assert {k: digest(world[k]) for k in ("wd", "user")} == before


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
                try:
                    _, err = p.communicate(timeout=600)
                except subprocess.TimeoutExpired:
                    p.kill()
                    pytest.fail("a diverged run did not exit within 600 s (a hang)")
                assert p.returncode == 1 and "non-finite loss" in err, err[-2000:]
                assert "Traceback" not in err
            procs = []


def test_every_command_runs_behind_the_error_wrapper():
    """Each script under experiments/ and benchmarks/ ends in ``cli.run(...)``; none calls
    ``app.run`` itself (whose errors would arrive as tracebacks)."""
    scripts = sorted([*EXPERIMENTS.glob("*.py"), *(REPO / "benchmarks").glob("*.py")])
    assert len(scripts) >= 10
    for script in scripts:
        text = script.read_text()
        assert "app.run(" not in text, script
        assert text.rstrip().endswith(("cli.run(main)", "cli.run(_cli_main)")), script

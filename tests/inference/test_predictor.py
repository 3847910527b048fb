"""``panet_jax.predict`` and ``experiments/segment.py`` on small image files."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances as tol
from paths import REPO
from PIL import Image

import panet_jax
from panet_jax.data import preprocess
from panet_jax.inference import loading
from panet_jax.model import PANet
from panet_jax.models.vgg import VGG16Encoder
from panet_jax.models.weights import vgg as vgg_weights

SIZE = (33, 33)
WIDTH = 1 / 16


def _scene(rng: np.random.Generator, h: int, w: int, box: tuple[int, int, int, int]):
    """Noisy background with a striped box; returns (uint8 image, bool box mask)."""
    image = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
    y0, x0, y1, x1 = box
    stripes = (np.arange(x1 - x0) // 2 % 2 * 150 + 80).astype(np.uint8)
    image[y0:y1, x0:x1] = stripes[None, :, None]
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return image, mask


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("segment")
    rng = np.random.default_rng(0)
    encoder = VGG16Encoder(width=WIDTH)
    params = jax.jit(encoder.init)(jax.random.key(0), jnp.zeros((1, *SIZE, 3)))["params"]
    vgg_weights.save_npz(params, d / "model.npz")

    img1, m1 = _scene(rng, 48, 40, (10, 8, 30, 30))
    img2, m2 = _scene(rng, 36, 52, (5, 20, 30, 45))
    Image.fromarray(img1).save(d / "s1.jpg", quality=95)
    Image.fromarray(m1.astype(np.uint8) * 255).save(d / "s1.png")  # 0/255 grey
    Image.fromarray(img2).save(d / "s2.png")
    Image.fromarray(m2.astype(np.uint8)).save(d / "s2_mask.png")  # 0/1 grey
    q1, _ = _scene(rng, 50, 70, (12, 30, 40, 60))
    q2, _ = _scene(rng, 33, 33, (4, 4, 20, 20))
    Image.fromarray(q1).save(d / "q1.jpg", quality=95)
    Image.fromarray(q2).save(d / "q2.png")
    Image.fromarray(q1[:41, :29, 0]).save(d / "q3.jpg")  # greyscale JPEG, odd size
    return {
        "dir": d,
        "npz": d / "model.npz",
        "variables": {"params": {"encoder": params}},
        "supports": [(d / "s1.jpg", d / "s1.png"), (d / "s2.png", d / "s2_mask.png")],
        "queries": [d / "q1.jpg", d / "q2.png", d / "q3.jpg"],
    }


def _segment(files, out_dir, *extra):
    cmd = [
        sys.executable, str(REPO / "experiments" / "segment.py"), f"--checkpoint={files['npz']}",
        *(f"--support={i}:{m}" for i, m in files["supports"]),
        *(f"--query={q}" for q in files["queries"]),
        f"--out_dir={out_dir}", "--image_size=33,33", *extra,
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_writes_original_size_outputs_like_the_api(files, tmp_path):
    out = tmp_path / "out"
    proc = _segment(files, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = panet_jax.predict(
        files["npz"],
        [s[0] for s in files["supports"]],
        [s[1] for s in files["supports"]],
        files["queries"],
        image_size=SIZE,
    )
    for query, expected in zip(files["queries"], api, strict=True):
        with Image.open(query) as im:
            size = im.size
        mask = Image.open(out / f"{query.stem}_mask.png")
        overlay = Image.open(out / f"{query.stem}_overlay.png")
        assert mask.size == size and overlay.size == size and overlay.mode == "RGB"
        assert expected.shape == (size[1], size[0])
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        np.testing.assert_array_equal(np.asarray(mask), expected * 255)

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = _segment(files, out)
    assert refused.returncode != 0
    assert "refusing to overwrite" in refused.stderr and "q1_mask.png" in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    replaced = _segment(files, out, "--overwrite", "--mask_format=palette")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    palette_mask = Image.open(out / "q1_mask.png")
    assert palette_mask.mode == "P"
    np.testing.assert_array_equal(np.asarray(palette_mask), api[0])


def test_cli_takes_the_prototypes_per_class(files, tmp_path):
    proc = _segment(files, tmp_path, "--prototypes_per_class=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = panet_jax.predict(files["npz"], *zip(*files["supports"], strict=True), files["queries"],
                            image_size=SIZE, prototypes_per_class=3)  # fmt: skip
    for query, expected in zip(files["queries"], api, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"{query.stem}_mask.png")),
                                      expected * 255)  # fmt: skip


def _model_scores(variables, img, mask, query, dtype, bg=None, prototypes=1):
    """The PANet module's upsampled fg-minus-bg score of a 1-way episode (the reference;
    ``img`` / ``mask`` one support or a list of them; support background ``bg``, default the
    rest of the image; ``prototypes`` per class)."""
    jdtype = jnp.dtype(dtype)
    encoder = VGG16Encoder(width=WIDTH, dtype=jdtype, param_dtype=jdtype)
    model = PANet(encoder, prototypes=prototypes)
    imgs, masks = (img, mask) if isinstance(img, list) else ([img], [mask])
    fg = np.stack(masks)[None, None].astype(dtype)
    norm = lambda x: preprocess.normalize_image(preprocess.resize_image(x, SIZE)).astype(dtype)
    episode = {
        "support_images": np.stack([norm(x) for x in imgs])[None, None],
        "support_fg": fg,
        "support_bg": 1.0 - fg if bg is None else bg[None, None, None].astype(dtype),
        "query_images": norm(query)[None, None],
        "query_labels": np.zeros((1, 1, *SIZE), np.int32),
        "class_ids": np.ones((1, 1), np.int32),
    }
    params = jax.tree.map(lambda x: jnp.asarray(x, jdtype), variables)
    logits = np.asarray(model.apply(params, episode)["logits"])[0, 0]
    return logits[..., 1] - logits[..., 0]


def test_predict_matches_the_model_at_training_size(files):
    """The API's 2-class threshold == the model's argmax: exactly in float64; in float32 at every
    pixel whose float64 margin exceeds the float32 error of a score (20 x the forward's relative
    error: 13 convs of fan-in <= 9 x 32, tolerances.layers_rel, twice for two programs)."""
    rng = np.random.default_rng(1)
    img, mask = _scene(rng, *SIZE, (8, 8, 25, 25))
    query, _ = _scene(rng, *SIZE, (3, 10, 20, 30))
    with jax.enable_x64(True):
        margin64 = _model_scores(files["variables"], img, mask, query, np.float64)
        (got64,) = panet_jax.predict(files["variables"], img, mask, [query], image_size=SIZE,
                                     dtype="float64")  # fmt: skip
    expected = (margin64 > 0).astype(np.uint8)
    assert 0 < expected.sum() < expected.size  # a non-trivial segmentation
    np.testing.assert_array_equal(got64, expected)
    (got32,) = panet_jax.predict(files["variables"], img, mask, [query], image_size=SIZE)
    sure = np.abs(margin64) > 20 * 2 * tol.layers_rel(13, 9 * 32)
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(got32[sure], expected[sure])


def test_support_background_masks_reach_the_model(files):
    """A weak support's own background (here a stripe, as a background scribble) gives the
    model's output with that background, exactly in float64; omitted, the rest of the image."""
    rng = np.random.default_rng(2)
    img, mask = _scene(rng, *SIZE, (8, 8, 25, 25))
    query, _ = _scene(rng, *SIZE, (3, 10, 20, 30))
    stripe = np.zeros(SIZE, bool)
    stripe[28:31, 2:30] = True
    with jax.enable_x64(True):
        want = _model_scores(files["variables"], img, mask, query, np.float64, stripe) > 0
        (got,) = panet_jax.predict(files["variables"], img, mask, [query], image_size=SIZE,
                                   dtype="float64", support_bg_masks=[stripe])  # fmt: skip
        (rest,) = panet_jax.predict(files["variables"], img, mask, [query], image_size=SIZE,
                                    dtype="float64", support_bg_masks=[~mask])  # fmt: skip
        (default,) = panet_jax.predict(files["variables"], img, mask, [query], image_size=SIZE,
                                       dtype="float64")  # fmt: skip
    np.testing.assert_array_equal(got, want.astype(np.uint8))
    np.testing.assert_array_equal(rest, default)
    assert not np.array_equal(got, default)  # the background mask mattered
    with pytest.raises(ValueError, match=r"support_masks\[0\]: no background pixel"):
        panet_jax.predict(files["variables"], img, mask, [query], image_size=SIZE,
                          support_bg_masks=[np.zeros(SIZE, bool)])  # fmt: skip


def test_several_prototypes_per_class_match_the_model(files):
    """``prototypes_per_class=k``: the model's k-means prototypes and best-prototype score
    (PANet(prototypes=k), the evaluator's), exactly in float64, 2 shots; k = 1 is PANet."""
    rng = np.random.default_rng(3)
    (img1, m1), (img2, m2) = (_scene(rng, *SIZE, box) for box in ((4, 4, 28, 20), (10, 6, 30, 26)))
    img1[4:28, 4:12] = 200  # a second look inside the object: two clusters
    query, _ = _scene(rng, *SIZE, (3, 10, 20, 30))
    query[3:20, 10:16] = 200
    with jax.enable_x64(True):
        got = {
            k: panet_jax.predict(files["variables"], [img1, img2], [m1, m2], [query],
                                 image_size=SIZE, dtype="float64", prototypes_per_class=k)[0]
            for k in (1, 3)
        }  # fmt: skip
        want = {
            k: _model_scores(files["variables"], [img1, img2], [m1, m2], query, np.float64,
                             prototypes=k) > 0
            for k in (1, 3)
        }  # fmt: skip
    for k in (1, 3):
        np.testing.assert_array_equal(got[k], want[k].astype(np.uint8))
    assert not np.array_equal(got[1], got[3])  # the prototypes mattered
    with pytest.raises(ValueError, match=r"prototypes_per_class: expected an integer >= 1"):
        panet_jax.predict(files["variables"], img1, m1, query, image_size=SIZE,
                          prototypes_per_class=0)  # fmt: skip


def test_predictor_reuses_cached_features_and_equals_predict(files):
    """A :class:`panet_jax.Predictor` encodes each distinct image once while it is cached (LRU,
    ``cache_size`` images) and gives ``predict``'s masks whatever is cached."""
    (s1, m1), (s2, m2) = files["supports"]
    q1, q2, q3 = files["queries"]
    expected = panet_jax.predict(files["npz"], [s1, s2], [m1, m2], [q1, q2, q3], image_size=SIZE)
    predictor = panet_jax.Predictor(files["npz"], image_size=SIZE, cache_size=4)
    # Supports are encoded first, then the queries; the cache after each call, oldest first:
    # s1 s2 q1 | s1 s2 q1 | s1 s2 q1 q2 | s2 q1 q2 q3 | s1 s2 q1 q2 (every lookup missed).
    calls = [([q1], 3), ([q1], 0), ([q2], 1), ([q1, q2, q3], 1), ([q1, q2], 4)]
    for queries, new in calls:
        before = predictor.encoded_images
        got = predictor([s1, s2], [m1, m2], queries)
        assert predictor.encoded_images - before == new, queries
        for q, mask in zip(queries, got, strict=True):
            np.testing.assert_array_equal(mask, expected[files["queries"].index(q)])
    uncached = panet_jax.Predictor(files["npz"], image_size=SIZE)
    for _ in range(2):
        uncached([s1], [m1], [s1])
    assert uncached.encoded_images == 4
    count = predictor.encoded_images
    predictor.clear_cache()
    predictor([s1, s2], [m1, m2], [q1])
    assert predictor.encoded_images - count == 3


def test_mask_value_and_nonzero_rule(files, tmp_path):
    rng = np.random.default_rng(2)
    img, box = _scene(rng, 40, 44, (6, 6, 30, 30))
    labels = np.where(box, 3, 0).astype(np.uint8)
    labels[0:4, 30:40] = 7  # another class
    labels[box & (np.arange(44)[None] % 9 == 0)] = 255  # VOC-style boundary pixels
    path = tmp_path / "labels.png"
    im = Image.fromarray(labels)
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])  # 'P' PNG
    im.save(path)
    query, _ = _scene(rng, 30, 50, (5, 5, 25, 25))
    run = lambda mask, **kw: panet_jax.predict(
        files["variables"], img, mask, query, image_size=SIZE, **kw
    )[0]
    np.testing.assert_array_equal(run(path, mask_value=3), run(labels == 3))
    np.testing.assert_array_equal(run(path), run(labels != 0))


def test_bad_inputs_raise_clear_errors(files, tmp_path):
    v = files["variables"]
    (img, mask), q = files["supports"][0], files["queries"][0]
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((48, 40), np.uint8)).save(tmp_path / "empty.png")
    dot = np.zeros((200, 200), np.uint8)
    dot[0, 0] = 1
    Image.fromarray(dot).save(tmp_path / "dot.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    big = np.zeros((200, 200, 3), np.uint8)

    cases = [
        (([], [], q), r"support_images: expected 1 to 5 support images, got 0"),
        (([img] * 6, [mask] * 6, q), r"expected 1 to 5 support images, got 6"),
        (([img, img], [mask], q), r"support_masks: got 1 masks for 2 support images"),
        (([img], [tmp_path / "small.png"], q), r"small\.png.*12x10.*s1\.jpg.*is 40x48"),
        (([img], [tmp_path / "empty.png"], q), r"empty\.png.*is empty"),
        (([big], [tmp_path / "dot.png"], q), r"dot\.png.*vanishes when the mask is resized"),
        (([tmp_path / "nope.jpg"], [mask], q), r"support_images\[0\].*nope\.jpg.*does not exist"),
        (([tmp_path / "broken.jpg"], [mask], q), r"broken\.jpg.*cannot read"),
        (([img], [mask], tmp_path / "missing.jpg"), r"query_images\[0\].*missing\.jpg"),
        (([img], [mask], []), r"query_images: expected at least one"),
    ]
    for (sup, masks, queries), pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            panet_jax.predict(v, sup, masks, queries, image_size=SIZE)
    with pytest.raises(ValueError, match=r"width=0\.125"):
        panet_jax.predict(v, [img], [mask], q, image_size=SIZE, width=0.125)
    with pytest.raises(FileNotFoundError, match=r"no_ckpt.* does not exist"):
        panet_jax.predict(tmp_path / "no_ckpt", [img], [mask], q, image_size=SIZE)


def test_import_is_light_and_predict_is_a_plain_function():
    code = (
        "import sys, types, panet_jax\n"
        "assert 'jax' not in sys.modules and 'tensorflow' not in sys.modules\n"
        "from panet_jax import predict, load_model, make_episode, Predictor\n"
        "from panet_jax.inference.predictor import predict as p, Predictor as P\n"
        "assert predict is p and isinstance(predict, types.FunctionType) and Predictor is P\n"
        "assert callable(load_model) and callable(make_episode)\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


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

"""Support masks from the editor's layers (hand-computed cases) and the page's limits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from panet_jax.app import annotations, limits, segmenter


def _layer(mask: np.ndarray) -> np.ndarray:
    """An RGBA editor layer painted (red, alpha 255) where ``mask``."""
    out = np.zeros((*mask.shape, 4), np.uint8)
    out[mask] = (230, 25, 75, 255)
    return out


def _grid(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows])


FG = _grid(["......", ".##...", ".##...", "......", "....#.", "......"])
BG = _grid(["######", "......", "...#..", "......", "......", "..#..."])


def test_dense_is_the_painted_mask_and_the_rest():
    fg, bg = annotations.support_masks("dense", [_layer(FG), _layer(BG)], "s")
    assert np.array_equal(fg, FG) and np.array_equal(bg, ~FG)


def test_scribbles_are_the_two_layers_and_foreground_wins_an_overlap():
    bg_layer = BG.copy()
    bg_layer[1, 1] = True  # painted on both layers: foreground
    fg, bg = annotations.support_masks("scribble", [_layer(FG), _layer(bg_layer)], "s")
    assert np.array_equal(fg, FG) and np.array_equal(bg, BG)


def test_box_is_the_tight_box_of_the_largest_stroke_and_outside_all_boxes():
    fg, bg = annotations.support_masks("bbox", [_layer(FG), _layer(BG)], "s")
    want_fg = np.zeros((6, 6), bool)
    want_fg[1:3, 1:3] = True  # the 4-px blob; the 1-px one at (4, 4) is the smaller instance
    want_bg = ~want_fg
    want_bg[4, 4] = False  # inside the other instance's box
    assert np.array_equal(fg, want_fg) and np.array_equal(bg, want_bg)


def test_mask_file_nonzero_is_the_object(tmp_path):
    Image.fromarray(FG.astype(np.uint8) * 7).save(tmp_path / "m.png")
    fg, bg = annotations.support_masks("file", [], "s", tmp_path / "m.png", (6, 6))
    assert np.array_equal(fg, FG) and np.array_equal(bg, ~FG)
    with pytest.raises(ValueError, match=r"s: the mask file is 6x6 \(WxH\) but the image is 7x6"):
        annotations.support_masks("file", [], "s", tmp_path / "m.png", (6, 7))


@pytest.mark.parametrize(
    ("kind", "fg", "bg", "message"),
    [
        ("dense", np.zeros((6, 6), bool), BG, "support 1: nothing is drawn on the foreground"),
        ("bbox", np.zeros((6, 6), bool), BG, "support 1: nothing is drawn on the foreground"),
        ("scribble", FG, np.zeros((6, 6), bool), "support 1: no background scribble"),
    ],
)
def test_an_empty_annotation_is_refused_by_name(kind, fg, bg, message):
    with pytest.raises(ValueError, match=message):
        annotations.support_masks(kind, [_layer(fg), _layer(bg)], "support 1")


def test_limits_refuse_non_images_and_huge_images_from_the_header(tmp_path):
    (tmp_path / "a.png").write_text("hello")
    with pytest.raises(ValueError, match="query 1 is not an image file"):
        limits.check_image_file(tmp_path / "a.png", "query 1")
    side = limits.MAX_IMAGE_SIDE + 1
    Image.new("L", (side, 20)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match=f"{side}x20 pixels; the largest side allowed"):
        limits.check_image_file(tmp_path / "wide.png", "q")


def test_requests_without_supports_or_queries_are_refused():
    with pytest.raises(ValueError, match="no class has a support"):
        segmenter.check_request({}, ["q.jpg"])
    with pytest.raises(ValueError, match="class 'cat' has 0 supports"):
        segmenter.check_request({"cat": []}, ["q.jpg"])
    with pytest.raises(ValueError, match="no query image"):
        segmenter.check_request({"cat": ["s"]}, [])
    assert segmenter.unique_slugs(["a b", "a?b", "c"]) == ["a-b_0", "a-b_1", "c"]

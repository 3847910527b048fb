"""Tests for panet_jax.data.weak (weak support annotations)."""

from __future__ import annotations

import numpy as np
import pytest

from panet_jax.data import weak

H = W = 64


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _shapes() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:H, :W]
    r2 = (yy - 32) ** 2 + (xx - 32) ** 2
    rect = np.zeros((H, W), bool)
    rect[10:30, 5:60] = True
    ell = np.zeros((H, W), bool)
    ell[5:60, 5:15] = True
    ell[50:60, 5:60] = True
    return {
        "disk": r2 <= 20**2,
        "ring": (r2 <= 28**2) & (r2 >= 18**2),
        "rect": rect,
        "L": ell,
    }


# --------------------------------------------------------------------------------------------
# bounding boxes
# --------------------------------------------------------------------------------------------


def _two_instances() -> tuple[np.ndarray, np.ndarray]:
    inst = np.zeros((10, 12), np.int64)
    inst[1:3, 1:4] = 1  # 6 px, box rows 1-2, cols 1-3
    inst[5, 4:9] = 2  # L-shaped, 5 + 3 = 8 px, box rows 5-8, cols 4-8
    inst[6:9, 8] = 2
    return inst > 0, inst


def test_bbox_largest_instance_and_bg_excludes_all_boxes() -> None:
    fg, inst = _two_instances()
    fg_box, bg_box = weak.bbox_masks(fg, inst)
    want_fg = np.zeros((10, 12), bool)
    want_fg[5:9, 4:9] = True
    want_bg = np.ones((10, 12), bool)
    want_bg[1:3, 1:4] = False
    want_bg[5:9, 4:9] = False
    assert fg_box.dtype == bool and bg_box.dtype == bool
    np.testing.assert_array_equal(fg_box, want_fg)
    np.testing.assert_array_equal(bg_box, want_bg)
    assert fg_box.sum() == 20 and bg_box.sum() == 120 - 6 - 20


def test_bbox_ignores_ids_outside_fg_and_does_not_mutate() -> None:
    fg, inst = _two_instances()
    inst[0:10, 10:12] = 3  # 20 px, the largest id, but entirely outside fg
    inst[9, 0:3] = 1  # extends instance 1 outside fg: must not grow its box
    before = inst.copy()
    fg_box, bg_box = weak.bbox_masks(fg, inst)
    np.testing.assert_array_equal(inst, before)
    assert fg_box[5:9, 4:9].all() and fg_box.sum() == 20
    assert bg_box[:, 10:].all() and bg_box[9, :].all()
    assert bg_box.sum() == 120 - 6 - 20


def test_bbox_tie_takes_smallest_id() -> None:
    inst = np.zeros((6, 6), np.int64)
    inst[0, 0:2] = 4
    inst[4:6, 5] = 2
    fg_box, _ = weak.bbox_masks(inst > 0, inst)
    want = np.zeros((6, 6), bool)
    want[4:6, 5] = True
    np.testing.assert_array_equal(fg_box, want)


@pytest.mark.parametrize("no_instances", ["zeros", "none"])
def test_bbox_falls_back_to_8_connected_components(no_instances: str) -> None:
    fg = np.zeros((8, 8), bool)
    fg[0, 0] = fg[1, 1] = fg[2, 2] = True  # one 8-connected component, 3 px, box 3x3
    fg[5:7, 4:8] = True  # 8 px, box rows 5-6, cols 4-7
    inst = np.zeros((8, 8), np.int64) if no_instances == "zeros" else None
    fg_box, bg_box = weak.bbox_masks(fg, inst)
    want_fg = np.zeros((8, 8), bool)
    want_fg[5:7, 4:8] = True
    want_bg = np.ones((8, 8), bool)
    want_bg[0:3, 0:3] = False
    want_bg[5:7, 4:8] = False
    np.testing.assert_array_equal(fg_box, want_fg)
    np.testing.assert_array_equal(bg_box, want_bg)


def test_bbox_empty_fg() -> None:
    inst = np.ones((5, 7), np.int64)
    fg_box, bg_box = weak.bbox_masks(np.zeros((5, 7)), inst)
    assert fg_box.shape == (5, 7) and not fg_box.any() and bg_box.all()


# --------------------------------------------------------------------------------------------
# scribble PNG rule
# --------------------------------------------------------------------------------------------


def _png_case() -> tuple[np.ndarray, np.ndarray]:
    png = np.full((6, 8), 255, np.uint8)
    png[0, :] = 0  # bg scribble
    png[2, 1:4] = 3
    png[3, 1:4] = 7
    png[4, 6] = 3  # id 3 outside fg: not part of the fg scribble
    png[5, 0:3] = 9  # id 9 only outside fg: never a candidate
    fg = np.zeros((6, 8), bool)
    fg[1:4, 0:5] = True
    png[1, 0] = 0  # a 0 inside fg stays bg scribble, not a candidate
    return png, fg


def test_png_rule_picks_only_valid_values() -> None:
    png, fg = _png_case()
    seen = set()
    for seed in range(40):
        fg_s, bg_s = weak.scribble_masks_from_png(png, fg, _rng(seed))
        np.testing.assert_array_equal(bg_s, png == 0)
        vals = set(np.unique(png[fg_s]).tolist())
        assert len(vals) == 1
        (v,) = vals
        assert v in (3, 7)
        np.testing.assert_array_equal(fg_s, fg & (png == v))
        assert fg_s.sum() == 3
        seen.add(v)
    assert seen == {3, 7}


def test_png_rule_is_deterministic_and_handles_no_candidate() -> None:
    png, fg = _png_case()
    a = weak.scribble_masks_from_png(png, fg, _rng(5))
    b = weak.scribble_masks_from_png(png, fg, _rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    only_outside = np.where(fg, 255, png)
    fg_s, bg_s = weak.scribble_masks_from_png(only_outside, fg, _rng(0))
    assert fg_s.dtype == bool and not fg_s.any()
    assert bg_s.sum() == 8


# --------------------------------------------------------------------------------------------
# scribble robot
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["disk", "ring", "rect", "L"])
def test_scribble_inside_nonempty_thin_deterministic(name: str) -> None:
    mask = _shapes()[name]
    s = weak.scribble_from_mask(mask, _rng(0))
    assert s.shape == mask.shape and s.dtype == bool
    assert s.any()
    assert not (s & ~mask).any()
    assert s.sum() <= 0.2 * mask.sum()
    np.testing.assert_array_equal(s, weak.scribble_from_mask(mask, _rng(0)))


@pytest.mark.parametrize("name", ["ring", "rect", "L"])
def test_scribble_is_a_long_stroke(name: str) -> None:
    mask = _shapes()[name]
    s = weak.scribble_from_mask(mask, _rng(1))
    rows, cols = np.nonzero(s)
    assert max(np.ptp(rows), np.ptp(cols)) >= 30  # spans most of the object


def test_scribble_of_one_pixel_lines_is_the_line() -> None:
    # A 1-px line is its own skeleton and longest path, and a Bezier curve with collinear,
    # evenly spaced control points is that segment: the scribble is the whole line.
    horiz = np.zeros((200, 300), bool)
    horiz[150, 100:281] = True
    np.testing.assert_array_equal(weak.scribble_from_mask(horiz, _rng(0)), horiz)
    diag = np.eye(25, dtype=bool)
    np.testing.assert_array_equal(weak.scribble_from_mask(diag, _rng(0)), diag)


def test_scribble_is_clipped_to_mask_and_keeps_end_points() -> None:
    # The Bezier curve through a 1-px L cuts the corner; only in-mask pixels may remain, and the
    # curve's end points are the path's end points (the two ends of the L).
    ell = np.zeros((60, 60), bool)
    ell[20, 5:36] = True
    ell[20:51, 35] = True
    s = weak.scribble_from_mask(ell, _rng(0))
    assert not (s & ~ell).any()
    assert s[20, 5] and s[50, 35]
    assert 4 <= s.sum() < ell.sum()


def test_scribble_has_one_stroke_per_component() -> None:
    two = np.zeros((40, 80), bool)
    two[5:15, 5:35] = True
    two[20:35, 45:75] = True
    s = weak.scribble_from_mask(two, _rng(0))
    assert not (s & ~two).any()
    assert s[:, :40].sum() >= 15 and s[:, 40:].sum() >= 15


def test_scribble_survives_vanishing_opening() -> None:
    # 2-px-wide bar: the opening (radius 1.5, shrinking) erases it at every radius > 1.
    bar = np.zeros((10, 220), bool)
    bar[4:6, 10:210] = True
    s = weak.scribble_from_mask(bar, _rng(0))
    assert not (s & ~bar).any()
    assert s.sum() >= 150


def test_scribble_empty_and_tiny_masks() -> None:
    assert not weak.scribble_from_mask(np.zeros((9, 9), bool), _rng(0)).any()
    for pix in ([(4, 4)], [(0, 0), (8, 8)], [(3, 3), (3, 4), (4, 4)]):
        m = np.zeros((9, 9), bool)
        for r, c in pix:
            m[r, c] = True
        np.testing.assert_array_equal(weak.scribble_from_mask(m, _rng(0)), m)
    block = np.zeros((9, 9), np.uint8)  # 4 px, skeleton < 4 nodes: falls back to the skeleton
    block[3:5, 3:5] = 1
    s = weak.scribble_from_mask(block, _rng(0))
    assert 1 <= s.sum() <= 4 and not (s & (block == 0)).any()


def test_background_scribble_avoids_fg_and_ignore() -> None:
    fg = _shapes()["disk"]
    yy, xx = np.mgrid[:H, :W]
    ignore = np.abs(np.sqrt((yy - 32) ** 2 + (xx - 32) ** 2) - 21.5) < 1.5
    s = weak.background_scribble(fg, ignore, _rng(0))
    assert s.any() and not (s & (fg | ignore)).any()
    assert not weak.background_scribble(np.ones((8, 8)), None, _rng(0)).any()


def test_bresenham_matches_hand_computation() -> None:
    got = weak._bresenham(np.array([[0, 0], [2, 5], [2, 5], [0, 5]]))
    want = [[0, 0], [0, 1], [1, 2], [1, 3], [2, 4], [2, 5], [2, 5], [2, 5], [1, 5], [0, 5]]
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------
# dispatcher and validation
# --------------------------------------------------------------------------------------------


def test_weak_support_masks_dispatch() -> None:
    fg = _shapes()["rect"].astype(np.float32)
    bg = 1.0 - fg
    fg_d, bg_d = weak.weak_support_masks("dense", fg, bg, rng=_rng(0))
    np.testing.assert_array_equal(fg_d, fg > 0)
    np.testing.assert_array_equal(bg_d, bg > 0)

    inst = (fg > 0).astype(np.int64)
    fg_b, bg_b = weak.weak_support_masks("bbox", fg, bg, instances=inst, rng=_rng(0))
    np.testing.assert_array_equal(fg_b, fg > 0)  # a rectangle is its own box
    np.testing.assert_array_equal(bg_b, fg == 0)

    png = np.where(fg > 0, 5, 0).astype(np.uint8)
    fg_p, bg_p = weak.weak_support_masks("scribble", fg, bg, scribble_png=png, rng=_rng(0))
    np.testing.assert_array_equal(fg_p, fg > 0)
    np.testing.assert_array_equal(bg_p, fg == 0)

    fg_s, bg_s = weak.weak_support_masks("scribble", fg, bg, rng=_rng(0))
    np.testing.assert_array_equal(fg_s, weak.scribble_from_mask(fg, _rng(0)))
    assert fg_s.any() and bg_s.any()
    assert not (fg_s & (fg == 0)).any() and not (bg_s & (bg == 0)).any()


def test_validation_errors() -> None:
    fg = np.zeros((8, 8))
    with pytest.raises(ValueError, match="kind"):
        weak.weak_support_masks("points", fg, fg, rng=_rng(0))
    with pytest.raises(ValueError, match=r"bg must have shape \[H, W\] = \(8, 8\)"):
        weak.weak_support_masks("dense", fg, np.zeros((8, 9)), rng=_rng(0))
    with pytest.raises(ValueError, match="instances"):
        weak.weak_support_masks("bbox", fg, fg, instances=np.zeros((4, 4), int), rng=_rng(0))
    with pytest.raises(ValueError, match="scribble_png"):
        weak.weak_support_masks("scribble", fg, fg, scribble_png=np.zeros(8), rng=_rng(0))
    with pytest.raises(ValueError, match="mask must have shape"):
        weak.scribble_from_mask(np.zeros((2, 8, 8), bool), _rng(0))
    with pytest.raises(ValueError, match="fg must have shape"):
        weak.bbox_masks(np.zeros(8), None)
    with pytest.raises(ValueError, match="ignore"):
        weak.background_scribble(fg, np.zeros((3, 3)), _rng(0))

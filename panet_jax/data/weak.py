"""Weak support annotations (scribbles and bounding boxes) from dense masks.

PANet evaluates its dense-trained models with *weak* support labels (paper Sec. 4.3; the
official ``util/scribbles.py``, ``dataloaders/customized.py`` ``getMask`` and
``util/utils.py`` ``get_bbox``). This module is pure NumPy + ``scipy.ndimage`` /
``scipy.sparse.csgraph``; all masks are 2-D ``[H, W]`` arrays (any dtype, nonzero = on) and every
mask returned is a fresh ``bool [H, W]`` array. Randomness only comes from an explicit
``np.random.Generator``.

* :func:`scribble_from_mask` / :func:`background_scribble`: the official "ScribblesRobot"
  (``util/scribbles.py``, adapted from the DAVIS interactive robot).
* :func:`scribble_masks_from_png`: the official ``getMask`` rule for a prepared
  ``ScribbleAugAuto`` PNG (0 = bg scribble, 255 = unlabelled, other values = fg scribble ids).
* :func:`bbox_masks`: the official ``get_bbox``.
* :func:`weak_support_masks`: dispatch on ``'dense' | 'scribble' | 'bbox'``.

Deviations from the official scribble robot (all deliberate, documented here once):

1. Opening footprint: integer offsets within Euclidean radius ``r`` (computed exactly with
   distance transforms). ``skimage.morphology.disk(float r)`` builds an even-sized,
   half-pixel-shifted footprint for non-integer ``r``.
2. If the opening vanishes for every radius down to 1 px, the unopened mask is used; the official
   code keeps the empty opening and produces no scribble (it actually crashes in ``_mask2graph``).
3. Medial axis: a port of scikit-image's ``medial_axis`` (same removal table, same processing
   order: distance, then "cornerness", then a random tie-break). The tie-break permutation is
   drawn from ``rng``; the scikit-image of 2019 used a fixed ``RandomState(0)``.
4. Cycle removal: the official code repeatedly deletes the heaviest edge (1 or sqrt(2)) of a found
   cycle. That always yields a minimum spanning tree, which we compute directly; only ties
   between equally heavy edges may resolve differently. Farthest-node ties likewise.
5. Rasterisation: Bezier points are rounded to the nearest pixel. The official ``scribbles2mask``
   maps ``x -> int(x * (W - 1) / W)``, i.e. shifts the scribble up to 1 px towards the origin and
   truncates. Segments are then joined with the same (exact, vectorised) Bresenham rule.
6. The scribble is intersected with the mask it came from (a many-point Bezier curve cuts corners).
   Its end points are skeleton pixels, so a non-empty mask always gives a non-empty scribble.
7. Masks with fewer than 4 pixels are returned as they are; if every skeleton component has fewer
   than 4 nodes (the official pruning size), the skeleton itself is returned instead of nothing.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree, shortest_path
from scipy.special import comb

from panet_jax.data import episodes, spec

__all__ = [
    "background_scribble",
    "bbox_masks",
    "episode_support_masks",
    "scribble_from_mask",
    "scribble_masks_from_png",
    "weak_support_masks",
]


# Official ScribblesRobot defaults.
KERNEL_SIZE = 0.15  # opening radius = KERNEL_SIZE * sqrt(area) * 0.5 ...
MAX_KERNEL_RADIUS = 16.0  # ... capped at this many pixels
RADIUS_SHRINK = 0.9  # factor applied while the opening vanishes
MIN_NB_NODES = 4  # skeleton components with fewer nodes are pruned
NB_POINTS = 1000  # Bezier samples per path

_EIGHT = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _as_mask(x: np.ndarray, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``bool`` copy of a 2-D mask; ``ValueError`` naming ``name`` if the shape is wrong."""
    x = np.asarray(x)
    if x.ndim != 2 or (shape is not None and x.shape != shape):
        want = "[H, W]" if shape is None else f"[H, W] = {tuple(shape)}"
        raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    return x != 0


def _as_labels(x: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Integer copy of a 2-D label map of the given shape."""
    x = np.asarray(x)
    if x.shape != shape:
        raise ValueError(f"{name} must have shape [H, W] = {tuple(shape)}, got {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        if not np.array_equal(x, np.round(x)):
            raise ValueError(f"{name} must hold integer labels, got dtype {x.dtype}")
    return x.astype(np.int64)


# --------------------------------------------------------------------------------------------
# scribble robot
# --------------------------------------------------------------------------------------------


def _opening(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary opening with the disk ``{(dy, dx): dy**2 + dx**2 <= radius**2}``.

    Like ``skimage.filters.rank`` the neighbourhood is truncated at the image border (pixels
    outside the image neither erode nor dilate).
    """
    if mask.all():
        return mask.copy()
    eroded = ndimage.distance_transform_edt(mask) > radius
    if not eroded.any():
        return eroded
    return ndimage.distance_transform_edt(~eroded) <= radius


def _robot_opening(mask: np.ndarray) -> np.ndarray:
    """Official pre-skeleton opening with the area-dependent, self-shrinking radius."""
    radius = min(KERNEL_SIZE * np.sqrt(mask.sum()) * 0.5, MAX_KERNEL_RADIUS)
    while radius > 1.0:
        opened = _opening(mask, radius)
        if opened.any():
            return opened
        radius *= RADIUS_SHRINK
    return mask  # official: no opening at radius <= 1 (and an empty result if it had vanished)


@functools.lru_cache(maxsize=1)
def _medial_axis_tables() -> tuple[bytes, np.ndarray]:
    """Lookup tables over the 512 3x3 patterns (bit ``3 * r + c``, centre = bit 4).

    ``keep``: the centre stays if it is set and removing it changes the number of 8-connected
    components or leaves fewer than 3 pixels. ``corner``: number of unset pixels.
    """
    bits = (np.arange(512)[:, None] >> np.arange(9)) & 1
    keep = np.zeros(512, dtype=np.uint8)
    for idx in range(512):
        if not bits[idx, 4]:
            continue
        pat = bits[idx].reshape(3, 3).astype(bool)
        without = pat.copy()
        without[1, 1] = False
        n_with = ndimage.label(pat, _EIGHT)[1]
        n_without = ndimage.label(without, _EIGHT)[1]
        keep[idx] = (n_with != n_without) or pat.sum() < 3
    corner = 9 - bits.sum(axis=1)
    return keep.tobytes(), corner


def _medial_axis(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Medial axis of a 2-D bool mask (scikit-image's algorithm, zero-padded by one pixel).

    Foreground pixels are visited once, in order of increasing distance to the background, then
    increasing cornerness, then a random permutation from ``rng``; a pixel is deleted unless the
    ``keep`` table says it is needed for connectivity or is an end point.
    """
    keep, corner_table = _medial_axis_tables()
    padded = np.pad(mask, 1)
    h, w = padded.shape
    weights = (1 << np.arange(9)).reshape(3, 3)
    pattern = ndimage.correlate(padded.astype(np.int64), weights, mode="constant", cval=0)
    flat = np.flatnonzero(padded)
    distance = ndimage.distance_transform_edt(padded).ravel()[flat]
    corner = corner_table[pattern.ravel()[flat]]
    tiebreak = rng.permutation(flat.size)
    order = flat[np.lexsort((tiebreak, corner, distance))].tolist()

    res = bytearray(padded.ravel().astype(np.uint8).tobytes())
    o_nw, o_n, o_ne, o_w, o_e, o_sw, o_s, o_se = (-w - 1, -w, -w + 1, -1, 1, w - 1, w, w + 1)
    for p in order:  # padding keeps every neighbour index inside the array
        acc = 16
        if res[p + o_nw]:
            acc |= 1
        if res[p + o_n]:
            acc |= 2
        if res[p + o_ne]:
            acc |= 4
        if res[p + o_w]:
            acc |= 8
        if res[p + o_e]:
            acc |= 32
        if res[p + o_sw]:
            acc |= 64
        if res[p + o_s]:
            acc |= 128
        if res[p + o_se]:
            acc |= 256
        res[p] = keep[acc]
    out = np.frombuffer(bytes(res), dtype=np.uint8).reshape(h, w).astype(bool)
    return out[1:-1, 1:-1]


def _skeleton_paths(skel: np.ndarray) -> list[np.ndarray]:
    """Longest path (``[L, 2]`` int (row, col)) of every 8-connected skeleton tree.

    Nodes are skeleton pixels in raster order, edges join 8-neighbours with their Euclidean
    length (the official radius-sqrt(2) graph); cycles are cut by a minimum spanning tree and
    components with fewer than ``MIN_NB_NODES`` nodes are dropped. The longest path of a tree is
    found with two breadth-first passes (hop counts), as in the official code.
    """
    rows, cols = np.nonzero(skel)
    n = rows.size
    if n == 0:
        return []
    index = np.full(skel.shape, -1, dtype=np.int64)
    index[rows, cols] = np.arange(n)
    h, w = skel.shape
    src, dst, wgt = [], [], []
    for dr, dc, length in ((0, 1, 1.0), (1, -1, np.sqrt(2.0)), (1, 0, 1.0), (1, 1, np.sqrt(2.0))):
        r2, c2 = rows + dr, cols + dc
        ok = (r2 < h) & (c2 >= 0) & (c2 < w)
        nb = np.full(n, -1, dtype=np.int64)
        nb[ok] = index[r2[ok], c2[ok]]
        has = nb >= 0
        src.append(np.flatnonzero(has))
        dst.append(nb[has])
        wgt.append(np.full(int(has.sum()), length))
    graph = coo_matrix(
        (np.concatenate(wgt), (np.concatenate(src), np.concatenate(dst))), shape=(n, n)
    ).tocsr()
    tree = minimum_spanning_tree(graph)
    n_comp, comp = connected_components(tree, directed=False)
    sizes = np.bincount(comp, minlength=n_comp)
    paths = []
    for c in np.flatnonzero(sizes >= MIN_NB_NODES):
        start = int(np.flatnonzero(comp == c)[0])
        hops = shortest_path(tree, directed=False, unweighted=True, indices=start)
        hops[~np.isfinite(hops)] = -1
        end0 = int(np.argmax(hops))
        hops, pred = shortest_path(
            tree, directed=False, unweighted=True, indices=end0, return_predecessors=True
        )
        hops[~np.isfinite(hops)] = -1
        node = int(np.argmax(hops))
        path = [node]
        while node != end0:
            node = int(pred[node])
            path.append(node)
        idx = np.asarray(path[::-1])
        paths.append(np.stack([rows[idx], cols[idx]], axis=1))
    return paths


def _bezier(points: np.ndarray, nb_points: int = NB_POINTS) -> np.ndarray:
    """``nb_points`` samples of the Bezier curve with control points ``points`` ``[N, 2]``.

    As in the official code, paths longer than ``nb_points`` are returned unsmoothed.
    """
    points = np.asarray(points, dtype=np.float64)
    n_ctrl = len(points)
    if n_ctrl > nb_points:
        return points
    t = np.linspace(0.0, 1.0, nb_points)[None, :]
    i = np.arange(n_ctrl)[:, None]
    deg = n_ctrl - 1
    basis = comb(deg, i) * t ** (deg - i) * (1.0 - t) ** i  # [N, nb_points]
    return basis.T @ points


def _bresenham(points: np.ndarray) -> np.ndarray:
    """Pixels ``[M, 2]`` of the polyline through integer ``points`` ``[N, 2]``.

    Exact Bresenham per segment (same rule as the official ``bresenham``: along the major axis,
    the minor offset after ``k`` steps is ``(2 k d_minor + d_major) // (2 d_major)``).
    """
    points = np.asarray(points, dtype=np.int64)
    if len(points) < 2:
        return points
    a, b = points[:-1], points[1:]
    d = b - a
    sign = np.where(d > 0, 1, -1)
    ad = np.abs(d)
    major = np.where(ad[:, 1] > ad[:, 0], 1, 0)  # axis with the larger extent (ties: axis 0)
    seg = np.arange(len(a))
    d_major = ad[seg, major]
    d_minor = ad[seg, 1 - major]
    steps = d_major + 1
    s = np.repeat(seg, steps)
    k = np.arange(steps.sum()) - np.repeat(np.cumsum(steps) - steps, steps)
    minor_k = (2 * k * d_minor[s] + d_major[s]) // (2 * np.maximum(d_major[s], 1))
    out = np.repeat(a, steps, axis=0)
    rows = np.arange(len(s))
    out[rows, major[s]] += k * sign[s, major[s]]
    out[rows, 1 - major[s]] += minor_k * sign[s, 1 - major[s]]
    return out


def scribble_from_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Thin (1-px) scribble inside a region, following the official ScribblesRobot.

    Args:
      mask: ``[H, W]`` region (nonzero = inside).
      rng: generator for the medial-axis tie-break (the recipe's only arbitrary choice).

    Returns:
      ``bool [H, W]`` scribble, a subset of ``mask``: one smoothed longest skeleton path per
      skeleton tree. Empty mask -> empty; masks of 1-3 pixels are returned as they are.

    Steps: opening with a disk of radius ``min(0.15 * sqrt(area) / 2, 16)`` (shrunk by 0.9 while
    the result is empty), medial axis, 8-neighbour graph, spanning tree, prune components with
    fewer than 4 nodes, longest path per tree, Bezier curve (1000 points), Bresenham, intersect
    with ``mask``. See the module docstring for the deviations from the official code.
    """
    region = _as_mask(mask, "mask")
    if region.sum() < MIN_NB_NODES:
        return region
    skel = _medial_axis(_robot_opening(region), rng)
    paths = _skeleton_paths(skel)
    if not paths:
        return skel & region
    out = np.zeros_like(region)
    for path in paths:
        curve = np.rint(_bezier(path)).astype(np.int64)
        pix = _bresenham(curve)
        out[pix[:, 0], pix[:, 1]] = True
    return out & region


def background_scribble(
    fg_mask: np.ndarray, ignore: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """Background scribble(s) drawn with :func:`scribble_from_mask` on ``~fg_mask & ~ignore``.

    Args:
      fg_mask: ``[H, W]`` foreground (nonzero = object).
      ignore: ``[H, W]`` pixels to avoid (e.g. VOC 255 boundaries), or ``None``.
      rng: see :func:`scribble_from_mask`.

    Returns:
      ``bool [H, W]`` scribble inside the background region (one path per skeleton tree).
    """
    fg = _as_mask(fg_mask, "fg_mask")
    region = ~fg
    if ignore is not None:
        region &= ~_as_mask(ignore, "ignore", fg.shape)
    return scribble_from_mask(region, rng)


def scribble_masks_from_png(
    scribble_png: np.ndarray,
    fg: np.ndarray,
    rng: np.random.Generator,
    pick: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Official ``getMask`` rule for a prepared ``ScribbleAugAuto`` PNG.

    Args:
      scribble_png: ``[H, W]`` integer scribble map: 0 = bg scribble, 255 = unlabelled, any other
        value = a fg scribble id.
      fg: ``[H, W]`` dense fg mask of the way's class.
      rng: picks one fg scribble id (official: Python ``random.choice``) when ``pick`` is None.
      pick: the fg scribble id to use (the official loader's pick, see
        :class:`panet_jax.data.official_sampler.OfficialScribblePicks`), or ``-1`` for none.

    Returns:
      ``(fg_scribble, bg_scribble)``, ``bool [H, W]`` each. ``bg_scribble = png == 0`` (everywhere,
      as official); ``fg_scribble = fg & (png == v)`` for one value ``v`` drawn uniformly from the
      distinct values found inside ``fg`` other than 0 and 255, or all False if there is none.
      (Official code compares the fg-restricted map, hence the ``fg &``.)
    """
    fgm = _as_mask(fg, "fg")
    png = _as_labels(scribble_png, "scribble_png", fgm.shape)
    bg_scribble = png == 0
    if pick is None:
        candidates = np.unique(png[fgm & (png != 0) & (png != 255)])
        pick = int(candidates[rng.choice(candidates.size)]) if candidates.size else -1
    if pick < 0:
        return np.zeros_like(fgm), bg_scribble
    return fgm & (png == pick), bg_scribble


def bbox_masks(fg: np.ndarray, instances: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Official ``get_bbox``: box supports from a dense mask and an instance map.

    Args:
      fg: ``[H, W]`` dense fg mask of the way's class.
      instances: ``[H, W]`` integer instance ids (VOC ``SegmentationObjectAug``), or ``None``.
        Ids outside ``fg`` are ignored (on a copy). If no nonzero id is left inside ``fg`` (or
        ``instances`` is ``None``), the 8-connected components of ``fg`` serve as instances.

    Returns:
      ``(fg_box, bg_box)``, ``bool [H, W]`` each: ``fg_box`` is the tight box of the largest
      instance (pixel count; ties -> smallest id), ``bg_box`` is everything outside the tight
      boxes of all instances. Empty ``fg`` -> ``(all False, all True)``.
    """
    fgm = _as_mask(fg, "fg")
    if instances is None:
        inst = np.zeros(fgm.shape, dtype=np.int64)
    else:
        inst = np.where(fgm, _as_labels(instances, "instances", fgm.shape), 0)
    if inst.min() < 0:
        raise ValueError("instances must hold non-negative ids")
    fg_box = np.zeros_like(fgm)
    bg_box = np.ones_like(fgm)
    if not fgm.any():
        return fg_box, bg_box
    if not inst.any():  # no instance map: connected components of fg
        inst = ndimage.label(fgm, _EIGHT)[0].astype(np.int64)
    area = np.bincount(inst.ravel())
    area[0] = 0
    boxes = ndimage.find_objects(inst)  # boxes[i - 1]: tight box of instance id i (or None)
    fg_box[boxes[int(np.argmax(area)) - 1]] = True
    for i in np.flatnonzero(area):
        bg_box[boxes[i - 1]] = False
    return fg_box, bg_box


def weak_support_masks(
    kind: str,
    fg: np.ndarray,
    bg: np.ndarray,
    *,
    instances: np.ndarray | None = None,
    scribble_png: np.ndarray | None = None,
    scribble_pick: int | None = None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Support ``(fg, bg)`` masks for one shot under a given annotation kind.

    Args:
      kind: ``'dense'`` (masks as given), ``'scribble'`` or ``'bbox'``.
      fg, bg: ``[H, W]`` dense support fg / bg masks (episode ``support_fg`` / ``support_bg``).
      instances: ``[H, W]`` instance ids for ``'bbox'`` (see :func:`bbox_masks`; ``None`` -> fg
        components).
      scribble_png: ``[H, W]`` prepared ``ScribbleAugAuto`` map for ``'scribble'``; if given the
        official PNG rule is used (:func:`scribble_masks_from_png`), otherwise scribbles are
        generated from ``fg`` and from ``bg`` with :func:`scribble_from_mask`.
      scribble_pick: with ``scribble_png``, the fg scribble id to use (see
        :func:`scribble_masks_from_png`); ``None`` draws it with ``rng``.
      rng: random generator (scribble id pick / skeleton tie-break).

    Returns:
      ``(fg_w, bg_w)``, ``bool [H, W]`` each (cast to ``float32`` for the episode). For
      ``'bbox'`` the bg comes from the boxes only, ``bg`` is not consulted (official).
    """
    if kind not in spec.SUPPORT_ANNOTATIONS:
        raise ValueError(f"kind must be one of {spec.SUPPORT_ANNOTATIONS}, got {kind!r}")
    fgm = _as_mask(fg, "fg")
    bgm = _as_mask(bg, "bg", fgm.shape)
    if instances is not None:
        _as_labels(instances, "instances", fgm.shape)
    if scribble_png is not None:
        _as_labels(scribble_png, "scribble_png", fgm.shape)
    if kind == "dense":
        return fgm, bgm
    if kind == "bbox":
        return bbox_masks(fgm, instances)
    if scribble_png is not None:
        return scribble_masks_from_png(scribble_png, fgm, rng, scribble_pick)
    return scribble_from_mask(fgm, rng), scribble_from_mask(bgm, rng)


def episode_support_masks(
    mode: str,
    labels: np.ndarray,
    instances: np.ndarray,
    scribbles: np.ndarray,
    has_scribble: np.ndarray,
    class_ids: np.ndarray,
    seed: int,
    scribble_picks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scribble / bbox support masks ``(fg, bg)``, each ``[N, K, H, W]`` float32.

    Calls :func:`weak_support_masks` per support image on the dense masks
    of the official rule, with the instance map (bbox) and the official scribble PNG where the
    dataset has one (otherwise scribbles are generated from the dense fg and bg masks).

    Args:
      mode: ``'scribble'`` or ``'bbox'``.
      labels, instances, scribbles: ``[N, K, H, W]`` resized (and flipped) support maps.
      has_scribble: ``[N, K]`` whether ``scribbles`` holds an official scribble file.
      class_ids: ``[N]`` the episode classes.
      seed: seeds the random choices (scribble id pick, skeleton tie-breaks).
      scribble_picks: ``[N, K]`` fg scribble ids to use instead of a random pick (the official
        loader's, ``-1`` = none), for supports with an official scribble file.
    """
    rng = np.random.default_rng(int(seed))
    n_ways, n_shots = labels.shape[:2]
    dense_fg, dense_bg = episodes.support_masks(labels, np.asarray(class_ids))
    fg = np.zeros(labels.shape, np.float32)
    bg = np.zeros(labels.shape, np.float32)
    for n in range(n_ways):
        for k in range(n_shots):
            f, g = weak_support_masks(
                mode,
                dense_fg[n, k],
                dense_bg[n, k],
                instances=instances[n, k],
                scribble_png=scribbles[n, k] if has_scribble[n, k] else None,
                scribble_pick=None if scribble_picks is None else int(scribble_picks[n, k]),
                rng=rng,
            )
            fg[n, k], bg[n, k] = f, g
    return fg, bg

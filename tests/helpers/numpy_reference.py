"""An independent float64 NumPy transcription of the official PANet head (kaixin96/PANet).

Written from the official ``models/fewshot.py`` / ``train.py`` /
``dataloaders/customized.py`` (kaixin96/PANet at 1695bf3), *not* from
``panet_jax/ops.py``. It deliberately follows the official code path literally:

* ``get_features`` upsamples the support **features** to the mask size with a PyTorch-style
  bilinear gather (``align_corners=False``) and pools ``sum(F * M) / (sum(M) + 1e-5)``;
* ``get_prototype`` averages shots as vectors, the bg prototype over ways and shots;
* ``cal_dist`` is the ATen-1.0 cosine ``x.y / sqrt(max(|x|^2 |y|^2, eps^2))`` times 20;
* ``align_loss`` loops over ways and shots with the official skip rule and ``/ K / N``;
* ``batch_loss`` mimics ``train.py`` for a batch: one ``CrossEntropyLoss(ignore_index=255)``
  over all query pixels of the batch, plus ``sum_episodes(align) / B``.

``ops.py`` instead projects masks down through the transposed interpolation matrices; the two
are equal in exact arithmetic, which is what the tests check.

Layout: arrays are channels-last like the package (``[..., h, w, C]``), everything float64.
No JAX is imported here.
"""

from __future__ import annotations

import functools

import numpy as np

IGNORE = 255
MAP_EPS = 1e-5
COS_EPS = 1e-8
SCALE = 20.0


# ------------------------------------------------------------------------------------------
# PyTorch F.interpolate(mode='bilinear', align_corners=False), a direct per-pixel gather.
# ------------------------------------------------------------------------------------------


@functools.cache
def source_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: (i0, i1, lambda1) as in ATen's ``upsample_bilinear2d`` CPU kernel.

    ``src = max((i + 0.5) * in/out - 0.5, 0)``, ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``,
    ``lambda1 = src - i0``; the output is ``(1 - lambda1) * x[i0] + lambda1 * x[i1]``.
    """
    scale = in_size / out_size
    i0 = np.zeros(out_size, np.int64)
    i1 = np.zeros(out_size, np.int64)
    lam = np.zeros(out_size, np.float64)
    for i in range(out_size):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(int(np.floor(src)), in_size - 1)
        i0[i] = lo
        i1[i] = min(lo + 1, in_size - 1)
        lam[i] = src - lo
    for a in (i0, i1, lam):
        a.setflags(write=False)  # cached
    return i0, i1, lam


def resize_bilinear(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``x [..., h, w, C]`` to ``[..., H, W, C]`` (half-pixel, clamped)."""
    x = np.asarray(x, np.float64)
    h, w = x.shape[-3], x.shape[-2]
    big_h, big_w = out_hw
    y0, y1, ly = source_indices(h, big_h)
    x0, x1, lx = source_indices(w, big_w)
    ly = ly[:, None, None]
    lx = lx[None, :, None]
    r0, r1 = y0[:, None], y1[:, None]
    c0, c1 = x0[None, :], x1[None, :]
    top = (1.0 - lx) * x[..., r0, c0, :] + lx * x[..., r0, c1, :]
    bot = (1.0 - lx) * x[..., r1, c0, :] + lx * x[..., r1, c1, :]
    return (1.0 - ly) * top + ly * bot


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The ``[out, in]`` matrix of 1-D bilinear resizing, column by column (resize of e_j)."""
    eye = np.eye(in_size)[:, :, None, None]  # [in (basis), in (h), 1 (w), 1 (C)]
    cols = resize_bilinear(eye, (out_size, 1))[..., 0, 0]  # [in (basis), out]
    return cols.T


def pooling_weights(feature_hw: tuple[int, int], mask: np.ndarray) -> np.ndarray:
    """``R(M)[i, j] = sum_xy upsample(e_ij)(x, y) M(x, y)``, built by upsampling basis maps."""
    h, w = feature_hw
    mask = np.asarray(mask, np.float64)
    out = np.zeros((*mask.shape[:-2], h, w))
    for i in range(h):
        for j in range(w):
            e = np.zeros((h, w, 1))
            e[i, j, 0] = 1.0
            up = resize_bilinear(e, mask.shape[-2:])[..., 0]
            out[..., i, j] = np.sum(up * mask, axis=(-2, -1))
    return out


# ------------------------------------------------------------------------------------------
# FewShotSeg.getFeatures / getPrototype / calDist.
# ------------------------------------------------------------------------------------------


def get_features(fts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Official ``getFeatures``: ``fts [h, w, C]``, ``mask [H, W]`` -> ``[C]``."""
    mask = np.asarray(mask, np.float64)
    up = resize_bilinear(fts, mask.shape)  # [H, W, C]
    return np.sum(up * mask[..., None], axis=(0, 1)) / (mask.sum() + MAP_EPS)


def get_prototype(fg_fts: list[list[np.ndarray]], bg_fts: list[list[np.ndarray]]):
    """Official ``getPrototype``: lists ``[way][shot]`` of C-vectors -> ``(fg [N, C], bg [C])``."""
    n_ways, n_shots = len(fg_fts), len(fg_fts[0])
    fg = [sum(way) / n_shots for way in fg_fts]
    bg = sum(sum(way) / n_shots for way in bg_fts) / n_ways
    return np.stack(fg), bg


def cal_dist(fts: np.ndarray, prototype: np.ndarray, scale: float = SCALE) -> np.ndarray:
    """Official ``calDist``: ATen-1.0 ``cosine_similarity(eps=1e-8) * scale`` on ``[..., C]``."""
    fts = np.asarray(fts, np.float64)
    prototype = np.asarray(prototype, np.float64)
    dot = np.sum(fts * prototype, axis=-1)
    w12 = np.sum(fts * fts, axis=-1) * np.sum(prototype * prototype)
    return dot / np.sqrt(np.maximum(w12, COS_EPS * COS_EPS)) * scale


def episode_prototypes(supp_fts, fore_mask, back_mask) -> np.ndarray:
    """``[1 + N, C]`` = [bg, fg_1..fg_N], from per-(way, shot) ``getFeatures`` calls."""
    n_ways, n_shots = fore_mask.shape[:2]
    fg_fts = [
        [get_features(supp_fts[n, k], fore_mask[n, k]) for k in range(n_shots)]
        for n in range(n_ways)
    ]
    bg_fts = [
        [get_features(supp_fts[n, k], back_mask[n, k]) for k in range(n_shots)]
        for n in range(n_ways)
    ]
    fg, bg = get_prototype(fg_fts, bg_fts)
    return np.concatenate([bg[None], fg], axis=0)


def episode_forward(supp_fts, fore_mask, back_mask, qry_fts, scale: float = SCALE):
    """One episode of ``FewShotSeg.forward``.

    Args: ``supp_fts [N, K, h, w, C]``, masks ``[N, K, H, W]``, ``qry_fts [Q, h, w, C]``.
    Returns: ``(pred [Q, h, w, 1+N], logits [Q, H, W, 1+N])``: the feature-resolution distance
    map (input of ``alignLoss``) and its upsampled version (the model output).
    """
    protos = episode_prototypes(supp_fts, fore_mask, back_mask)
    pred = np.stack([cal_dist(qry_fts, p, scale) for p in protos], axis=-1)
    logits = resize_bilinear(pred, fore_mask.shape[-2:])
    return pred, logits


# ------------------------------------------------------------------------------------------
# Losses.
# ------------------------------------------------------------------------------------------


def cross_entropy_terms(logits: np.ndarray, labels: np.ndarray, ignore: int = IGNORE):
    """``(sum of NLL over non-ignored pixels, their count)``; logits ``[..., P]``."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    mx = logits.max(axis=-1, keepdims=True)
    logp = logits - mx - np.log(np.sum(np.exp(logits - mx), axis=-1, keepdims=True))
    valid = labels != ignore
    safe = np.where(valid, labels, 0)
    nll = -np.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return float(np.sum(nll[valid])), int(valid.sum())


def cross_entropy(logits, labels, ignore: int = IGNORE, empty_value: float = np.nan) -> float:
    """``nn.CrossEntropyLoss(ignore_index=255)`` (mean over valid pixels). PyTorch returns NaN
    when every pixel is ignored; ``empty_value`` chooses what this returns then."""
    total, count = cross_entropy_terms(logits, labels, ignore)
    return total / count if count else float(empty_value)


def support_label(fore_mask: np.ndarray, back_mask: np.ndarray) -> np.ndarray:
    """Official PAR label: all 255, then 1 where fore_mask == 1, then 0 where back_mask == 1."""
    label = np.full(fore_mask.shape, IGNORE, np.int64)
    label[fore_mask == 1] = 1
    label[back_mask == 1] = 0
    return label


def align_loss(
    qry_fts,
    pred,
    supp_fts,
    fore_mask,
    back_mask,
    scale: float = SCALE,
    empty_value: float = np.nan,
    return_skipped: bool = False,
):
    """Official ``FewShotSeg.alignLoss`` for one episode (section 3 of the notes).

    Args: ``qry_fts [Q, h, w, C]``, ``pred [Q, h, w, 1+N]`` (feature resolution),
    ``supp_fts [N, K, h, w, C]``, masks ``[N, K, H, W]``.
    ``empty_value``: value of an all-ignore support CE (PyTorch: NaN).
    """
    qry_fts = np.asarray(qry_fts, np.float64)
    n_ways, n_shots = fore_mask.shape[:2]
    pred_mask = np.argmax(pred, axis=-1)  # [Q, h, w], first index on ties like torch
    binary_masks = [(pred_mask == i).astype(np.float64) for i in range(1 + n_ways)]
    skip_ways = [i for i in range(n_ways) if binary_masks[i + 1].sum() == 0]
    qry_prototypes = np.stack(
        [np.sum(qry_fts * m[..., None], axis=(0, 1, 2)) / (m.sum() + MAP_EPS) for m in binary_masks]
    )  # [1 + N, C]
    loss = 0.0
    for way in range(n_ways):
        if way in skip_ways:
            continue
        prototypes = [qry_prototypes[0], qry_prototypes[way + 1]]
        for shot in range(n_shots):
            img_fts = supp_fts[way, shot]
            supp_dist = [cal_dist(img_fts, p, scale) for p in prototypes]
            supp_pred = np.stack(supp_dist, axis=-1)  # [h, w, 2]
            supp_pred = resize_bilinear(supp_pred, fore_mask.shape[-2:])
            label = support_label(fore_mask[way, shot], back_mask[way, shot])
            ce = cross_entropy(supp_pred, label, empty_value=empty_value)
            loss = loss + ce / n_shots / n_ways
    if return_skipped:
        return loss, skip_ways
    return loss


def batch_loss(
    supp_fts,
    fore_mask,
    back_mask,
    qry_fts,
    qry_labels,
    *,
    par_weight=1.0,
    align=True,
    scale: float = SCALE,
    empty_value: float = np.nan,
):
    """``train.py`` for a batch of ``B`` episodes.

    Args: ``supp_fts [B, N, K, h, w, C]``, masks ``[B, N, K, H, W]``, ``qry_fts [B, Q, h, w, C]``,
    ``qry_labels [B, Q, H, W]``.
    Returns: ``(total, seg, par)``: seg is one CE over all valid query pixels of the batch
    (the model output is ``[N_q * B, 1+N, H, W]``), par = ``sum_episodes(alignLoss) / B``.
    """
    n_batch = supp_fts.shape[0]
    all_logits, align_sum = [], 0.0
    for b in range(n_batch):
        pred, logits = episode_forward(supp_fts[b], fore_mask[b], back_mask[b], qry_fts[b], scale)
        all_logits.append(logits)
        if align:
            align_sum = align_sum + align_loss(
                qry_fts[b], pred, supp_fts[b], fore_mask[b], back_mask[b], scale, empty_value
            )
    seg = cross_entropy(np.stack(all_logits), qry_labels, empty_value=empty_value)
    par = align_sum / n_batch
    return seg + par_weight * par, seg, par


# ------------------------------------------------------------------------------------------
# Data-side rule (dataloaders/customized.py getMask).
# ------------------------------------------------------------------------------------------


def get_mask(label: np.ndarray, class_id: int, class_ids) -> tuple[np.ndarray, np.ndarray]:
    """Official ``getMask``: fg = label == class_id; bg = label != class_id, then zeroed where
    the label is any class of the episode. VOC 255 therefore counts as background."""
    fg = np.where(label == class_id, 1.0, 0.0)
    bg = np.where(label != class_id, 1.0, 0.0)
    for cid in class_ids:
        bg[label == cid] = 0.0
    return fg, bg

"""Transliterations of the official PANet data code (kaixin96/PANet at 1695bf3), for tests.

Independent of ``panet_jax``: the episode draw of ``dataloaders/customized.py`` +
``dataloaders/common.py`` ``PairedDataset(same=False)`` and ``fewShot``, and ``getMask``'s
scribble pick as it runs inside ``test.py``'s DataLoader worker (seeded from torch's RNG).
"""

from __future__ import annotations

import random

import numpy as np


def paired_dataset(subsets_len, n_ways, n_shots, n_queries, max_iters, seed):
    """The official episode draw, line by line: ``[(class positions [N], support [N][K],
    query [Q])]`` with ``(subset, position)`` pairs."""
    random.seed(seed)  # util/utils.set_seed
    cnt_query = np.bincount(random.choices(population=range(n_ways), k=n_queries), minlength=n_ways)
    n_elements = [n_shots + x for x in cnt_query]
    n_datasets = len(subsets_len)
    indices = [[(dataset_idx, data_idx)
                for i, dataset_idx in enumerate(random.sample(range(n_datasets), k=len(n_elements)))
                for data_idx in random.sample(range(subsets_len[dataset_idx]), k=n_elements[i])]
               for i_iter in range(max_iters)]  # fmt: skip
    cumsum_idx = np.cumsum([0] + [n_shots + x for x in cnt_query])
    episodes = []
    for sample in indices:
        class_of = [sample[cumsum_idx[i]][0] for i in range(n_ways)]
        support = [[sample[cumsum_idx[i] + j] for j in range(n_shots)] for i in range(n_ways)]
        query = [sample[cumsum_idx[i + 1] - j - 1]
                 for i in range(n_ways) for j in range(cnt_query[i])]  # fmt: skip
        episodes.append((class_of, support, query))
    return episodes


def worker_random(seed: int) -> random.Random:
    """The ``random`` state of ``test.py``'s DataLoader worker 0 after ``set_seed(seed)``:
    ``random.seed(base_seed + worker_id)`` with torch's first int64 draw as ``base_seed``."""
    import torch

    torch.manual_seed(seed)
    base_seed = torch.empty((), dtype=torch.int64).random_().item()
    return random.Random(base_seed + 0)


def scribble_pick(rng: random.Random, label, scribble, class_id: int):
    """``getMask``'s fg scribble on torch tensors: ``None`` if it has no candidate, else the
    picked id (one ``random.choice`` on the worker's stream)."""
    import torch

    label, scribble = torch.as_tensor(label).long(), torch.as_tensor(scribble).long()
    fg_mask = torch.where(label == class_id, torch.ones_like(label), torch.zeros_like(label))
    fg_scribble = torch.where(
        (fg_mask == 1) & (scribble != 0) & (scribble != 255), scribble, torch.zeros_like(fg_mask)
    )
    scribble_cls_list = list(set(np.unique(fg_scribble)) - set([0]))
    if scribble_cls_list:
        return rng.choice(scribble_cls_list).item()
    return None


def transform_sample(image: np.ndarray, label: np.ndarray, size: tuple[int, int]):
    """``Resize(size)`` + ``ToTensorNormalize`` of the official test transform (torchvision
    0.2.1 ``resize`` is PIL ``BILINEAR`` for the image, ``NEAREST`` for the label):
    ``(image [3, H, W] float32 tensor, label [H, W] long tensor)``."""
    import torch
    from PIL import Image

    h, w = size
    img = Image.fromarray(image).resize((w, h), Image.BILINEAR)
    lab = Image.fromarray(label.astype(np.uint8)).resize((w, h), Image.NEAREST)
    t = torch.from_numpy(np.asarray(img, np.uint8).copy()).permute(2, 0, 1).float().div(255)
    for c, m, s in zip(t, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], strict=True):
        c.sub_(m).div_(s)  # torchvision 0.2.1 normalize, channel by channel, in place
    return t, torch.Tensor(np.array(lab)).long()


def get_dense_masks(label, class_id: int, class_ids):
    """``getMask``'s dense part: ``(fg_mask, bg_mask)`` long tensors."""
    import torch

    fg_mask = torch.where(label == class_id, torch.ones_like(label), torch.zeros_like(label))
    bg_mask = torch.where(label != class_id, torch.ones_like(label), torch.zeros_like(label))
    for c in class_ids:
        bg_mask[label == c] = 0
    return fg_mask, bg_mask


def query_label(label, class_ids):
    """``fewShot``'s query label: 255 kept, way j -> j + 1, everything else 0."""
    import torch

    out = torch.zeros_like(label)
    out[label == 255] = 255
    for j, c in enumerate(class_ids):
        out[label == c] = j + 1
    return out

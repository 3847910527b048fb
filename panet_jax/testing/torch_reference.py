"""Plain-PyTorch re-statement of the official PANet model (kaixin96/PANet), for comparisons.

Transcribed from ``models/vgg.py`` (``Encoder``) and ``models/fewshot.py`` (``FewShotSeg``)
of kaixin96/PANet (1695bf3): NCHW, list-of-tensors
inputs, a Python loop over episodes, ``F.interpolate(mode='bilinear', align_corners=False)``,
support masked average pooling on features *upsampled to the mask size*,
``F.cosine_similarity * 20`` and ``F.cross_entropy(ignore_index=255)``.

Differences from the official file, none of which change the numbers: the encoder is one flat
``nn.Sequential`` with torchvision ``features`` indices (so ``vgg16-397923af.pth`` entries load
by name), weights are not loaded in ``__init__``, and an optional ``width`` multiplier shrinks
the channels (same rounding as ``panet_jax.models.vgg.scaled_channels``) for fast tests.
No torchvision: it is not installable beside the CPU torch wheel here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# torchvision vgg16().features: 'M' = max-pool. Channels and, for convs, dilation.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip


def scaled_channels(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 1); mirrors ``vgg.scaled_channels``."""
    return max(1, round(channels * width))


def make_features(width: float = 1.0, in_channels: int = 3) -> nn.Sequential:
    """The official DeepLab-v1 VGG-16 trunk with torchvision ``features`` indices.

    conv (ReLU) x2, MaxPool(3, 2, 1), x2, MaxPool(3, 2, 1), x3, MaxPool(3, 2, 1), x3,
    MaxPool(3, 1, 1), then 3 convs with dilation 2 / padding 2 and no ReLU after the last.
    Indices 0..28, the convs at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28.
    """
    layers: list[nn.Module] = []
    n_pools = 0
    c_in = in_channels
    for i, v in enumerate(VGG16_CFG):
        if v == "M":
            n_pools += 1
            stride = 1 if n_pools == 4 else 2
            layers.append(nn.MaxPool2d(kernel_size=3, stride=stride, padding=1))
            continue
        dil = 2 if n_pools == 4 else 1
        c_out = scaled_channels(int(v), width)
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=dil, dilation=dil))
        if i != len(VGG16_CFG) - 1:  # lastRelu=False
            layers.append(nn.ReLU(inplace=True))
        c_in = c_out
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Official ``Encoder``; ``state_dict`` keys are ``features.N.weight`` / ``features.N.bias``."""

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.features = make_features(width, in_channels)
        for m in self.modules():  # official _init_weights (before the pretrained copy)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _interp(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class FewShotSeg(nn.Module):
    """Official ``FewShotSeg`` (PANet): encoder + non-parametric prototype head + PAR."""

    def __init__(self, width: float = 1.0, align: bool = True, scaler: float = 20.0) -> None:
        super().__init__()
        self.encoder = Encoder(width)
        self.config = {"align": align}
        self.scaler = scaler

    def forward(
        self,
        supp_imgs: list[list[torch.Tensor]],
        fore_mask: list[list[torch.Tensor]],
        back_mask: list[list[torch.Tensor]],
        qry_imgs: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Args (official layout): ``supp_imgs`` way x shot x ``[B, 3, H, W]``; ``fore_mask``,
        ``back_mask`` way x shot x ``[B, H, W]``; ``qry_imgs`` N_q x ``[B, 3, H, W]``.
        Returns ``(logits [N_q * B, 1 + Wa, H, W], align_loss / B)``."""
        n_ways = len(supp_imgs)
        n_shots = len(supp_imgs[0])
        n_queries = len(qry_imgs)
        batch_size = supp_imgs[0][0].shape[0]
        img_size = supp_imgs[0][0].shape[-2:]

        imgs_concat = torch.cat(
            [torch.cat(way, dim=0) for way in supp_imgs] + [torch.cat(qry_imgs, dim=0)], dim=0
        )
        img_fts = self.encoder(imgs_concat)
        if img_fts.requires_grad:  # expose d loss / d features to the tests
            img_fts.retain_grad()
        self.last_features = img_fts
        fts_size = img_fts.shape[-2:]
        supp_fts = img_fts[: n_ways * n_shots * batch_size].view(
            n_ways, n_shots, batch_size, -1, *fts_size
        )  # Wa x Sh x B x C x H' x W'
        qry_fts = img_fts[n_ways * n_shots * batch_size :].view(
            n_queries, batch_size, -1, *fts_size
        )  # N x B x C x H' x W'
        fore = torch.stack([torch.stack(way, dim=0) for way in fore_mask], dim=0)
        back = torch.stack([torch.stack(way, dim=0) for way in back_mask], dim=0)

        align_loss: torch.Tensor | float = 0
        outputs = []
        for epi in range(batch_size):
            supp_fg_fts = [
                [self.get_features(supp_fts[way, shot, [epi]], fore[way, shot, [epi]])
                 for shot in range(n_shots)]
                for way in range(n_ways)
            ]  # fmt: skip
            supp_bg_fts = [
                [self.get_features(supp_fts[way, shot, [epi]], back[way, shot, [epi]])
                 for shot in range(n_shots)]
                for way in range(n_ways)
            ]  # fmt: skip
            fg_prototypes, bg_prototype = self.get_prototype(supp_fg_fts, supp_bg_fts)
            prototypes = [bg_prototype, *fg_prototypes]
            dist = [self.cal_dist(qry_fts[:, epi], p) for p in prototypes]
            pred = torch.stack(dist, dim=1)  # N x (1 + Wa) x H' x W'
            outputs.append(_interp(pred, img_size))
            if self.config["align"] and self.training:
                align_loss = align_loss + self.align_loss(
                    qry_fts[:, epi], pred, supp_fts[:, :, epi], fore[:, :, epi], back[:, :, epi]
                )
        output = torch.stack(outputs, dim=1)  # N x B x (1 + Wa) x H x W
        output = output.view(-1, *output.shape[2:])
        return output, align_loss / batch_size

    def cal_dist(self, fts: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
        """Official ``calDist``: cosine similarity along channels times the scaler."""
        return F.cosine_similarity(fts, prototype[..., None, None], dim=1) * self.scaler

    @staticmethod
    def get_features(fts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Official ``getFeatures``: upsample the features to the mask size, then MAP."""
        fts = _interp(fts, mask.shape[-2:])
        return torch.sum(fts * mask[None, ...], dim=(2, 3)) / (
            mask[None, ...].sum(dim=(2, 3)) + 1e-5
        )  # 1 x C

    @staticmethod
    def get_prototype(
        fg_fts: list[list[torch.Tensor]], bg_fts: list[list[torch.Tensor]]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Official ``getPrototype``: shot means; the bg prototype also averages the ways."""
        n_ways, n_shots = len(fg_fts), len(fg_fts[0])
        fg_prototypes = [sum(way) / n_shots for way in fg_fts]
        bg_prototype = sum(sum(way) / n_shots for way in bg_fts) / n_ways
        return fg_prototypes, bg_prototype

    def align_loss(
        self,
        qry_fts: torch.Tensor,
        pred: torch.Tensor,
        supp_fts: torch.Tensor,
        fore_mask: torch.Tensor,
        back_mask: torch.Tensor,
    ) -> torch.Tensor | float:
        """Official ``alignLoss`` for one episode."""
        n_ways, n_shots = len(fore_mask), len(fore_mask[0])
        pred_mask = pred.argmax(dim=1, keepdim=True)  # N x 1 x H' x W'
        binary_masks = [pred_mask == i for i in range(1 + n_ways)]
        skip_ways = [i for i in range(n_ways) if binary_masks[i + 1].sum() == 0]
        pred_mask = torch.stack(binary_masks, dim=1).float()  # N x (1 + Wa) x 1 x H' x W'
        qry_prototypes = torch.sum(qry_fts.unsqueeze(1) * pred_mask, dim=(0, 3, 4))
        qry_prototypes = qry_prototypes / (pred_mask.sum((0, 3, 4)) + 1e-5)  # (1 + Wa) x C

        loss: torch.Tensor | float = 0
        for way in range(n_ways):
            if way in skip_ways:
                continue
            prototypes = [qry_prototypes[[0]], qry_prototypes[[way + 1]]]
            for shot in range(n_shots):
                img_fts = supp_fts[way, [shot]]
                supp_dist = [self.cal_dist(img_fts, p) for p in prototypes]
                supp_pred = _interp(torch.stack(supp_dist, dim=1), fore_mask.shape[-2:])
                supp_label = torch.full_like(fore_mask[way, shot], 255).long()
                supp_label[fore_mask[way, shot] == 1] = 1
                supp_label[back_mask[way, shot] == 1] = 0
                loss = (
                    loss
                    + F.cross_entropy(supp_pred, supp_label[None, ...], ignore_index=255)
                    / n_shots
                    / n_ways
                )
        return loss


# ------------------------------------------------------------------------------------------
# Glue between our episode dicts / Flax params and the official layouts.
# ------------------------------------------------------------------------------------------


def episodes_to_official(
    episodes: Mapping[str, np.ndarray], dtype: np.dtype = np.float32
) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]], list[list[torch.Tensor]],
           list[torch.Tensor], torch.Tensor]:  # fmt: skip
    """Batched episode dict (``panet_jax.data.spec``, NHWC) -> official forward arguments in
    ``dtype`` and the ``[N_q * B, H, W]`` query label (query-major, as ``train.py``
    concatenates it)."""
    supp = np.asarray(episodes["support_images"], dtype)  # B N K H W 3
    n_ways, n_shots = supp.shape[1:3]
    t = torch.from_numpy
    supp_imgs = [
        [t(np.ascontiguousarray(supp[:, n, k].transpose(0, 3, 1, 2))) for k in range(n_shots)]
        for n in range(n_ways)
    ]
    fg = np.asarray(episodes["support_fg"], dtype)
    bg = np.asarray(episodes["support_bg"], dtype)
    fore = [[t(np.ascontiguousarray(fg[:, n, k])) for k in range(n_shots)] for n in range(n_ways)]
    back = [[t(np.ascontiguousarray(bg[:, n, k])) for k in range(n_shots)] for n in range(n_ways)]
    qry = np.asarray(episodes["query_images"], dtype)  # B Q H W 3
    qry_imgs = [t(np.ascontiguousarray(qry[:, q].transpose(0, 3, 1, 2))) for q in
                range(qry.shape[1])]  # fmt: skip
    labels = np.asarray(episodes["query_labels"]).astype(np.int64)  # B Q H W
    query_label = t(
        np.ascontiguousarray(labels.transpose(1, 0, 2, 3).reshape(-1, *labels.shape[2:]))
    )
    return supp_imgs, fore, back, qry_imgs, query_label


def official_loss(
    model: FewShotSeg,
    episodes: Mapping[str, np.ndarray],
    par_weight: float = 1.0,
    dtype: np.dtype = np.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``train.py``'s loss: ``(total, query CE, align loss, logits [N_q*B, 1+Wa, H, W])``;
    ``dtype`` float64 with a ``.double()`` model for the exactness checks."""
    supp_imgs, fore, back, qry_imgs, query_label = episodes_to_official(episodes, dtype)
    output, align = model(supp_imgs, fore, back, qry_imgs)
    criterion = nn.CrossEntropyLoss(ignore_index=255)
    query_loss = criterion(output, query_label)
    align = torch.as_tensor(align, dtype=output.dtype)
    return query_loss + par_weight * align, query_loss, align, output


def conv_modules(encoder: Encoder) -> list[nn.Conv2d]:
    """The 13 convs of the encoder, in order (conv1_1 ... conv5_3)."""
    return [m for m in encoder.features if isinstance(m, nn.Conv2d)]


def features_to_jax(
    fts: torch.Tensor, n_ways: int, n_shots: int, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """The official encoder output ``[Wa*Sh*B + N_q*B, C, h, w]`` (or its gradient) as
    ``(support [B, N, K, h, w, C], query [B, Q, h, w, C])`` in panet_jax's layout."""
    x = fts.detach().cpu().numpy()
    nkb = n_ways * n_shots * batch
    supp = x[:nkb].reshape(n_ways, n_shots, batch, *x.shape[1:]).transpose(2, 0, 1, 4, 5, 3)
    qry = x[nkb:].reshape(-1, batch, *x.shape[1:]).transpose(1, 0, 3, 4, 2)
    return supp, qry


def oihw_to_hwio(w: torch.Tensor) -> np.ndarray:
    """A torch conv weight (or its grad) as a Flax HWIO kernel."""
    return w.detach().cpu().numpy().transpose(2, 3, 1, 0)

"""Training-free PANet with a DINOv2 encoder: evaluate the published weights, no training step.

    python experiments/evaluate.py \
        --config=configs/dinov2.py:dataset=pascal5i,fold=0,shot=1 \
        --checkpoint=dinov2_vitb14_pretrain.pth

``:dataset=pascal5i|coco20i|fss1000|synthetic`` picks the dataset and its test protocol (as in
``configs/<dataset>.py``), ``fold=``, ``shot=`` and ``encoder=dinov2_vit{s,b,l,g}14[_reg]`` as
elsewhere, ``size=`` the square image side (a multiple of 14). ``--checkpoint`` takes the official
``.pth``, a Hugging Face ``model.safetensors`` or a converted ``.npz``. Supports and queries are
518 x 518 by default: the size the hub models were trained at and store their position
embeddings for (37 x 37 patches, used without resampling), giving 37 x 37 feature maps.
The synthetic set's images are 128 px, so it defaults to 126 (9 x 9 patches).

Fine-tuning with PAR stays possible (``experiments/train.py`` with ``model.pretrained`` set and
``model.frozen`` naming the ViT parts to keep, e.g. ``patch_embed,blocks_0-7``).
"""

from panet_jax.config import apply_arg, base_config

DATASETS = ("pascal5i", "coco20i", "fss1000", "synthetic")
DEFAULT_SIZE = {"synthetic": 126}  # others: 518
LOCAL_KEYS = ("dataset", "size")


def _split(arg: str | None) -> tuple[dict[str, str], str]:
    """``dataset=`` / ``size=`` items of the suffix, and the rest for ``apply_arg``."""
    local, rest = {}, []
    for item in (arg or "").split(","):
        key, _, value = item.strip().partition("=")
        if key in LOCAL_KEYS:
            local[key] = value
        elif item.strip():
            rest.append(item.strip())
    return local, ",".join(rest)


def _dataset(c, dataset: str) -> None:
    c.data.dataset = dataset
    if dataset == "coco20i":
        c.data.coco_split = "panet"
    elif dataset == "fss1000":  # HSNet's protocol, as configs/fss1000.py
        c.eval.protocol, c.eval.sampler = "hsnet", "stateless"
        c.eval.runs, c.eval.episodes, c.eval.seed = 1, 0, 0
    elif dataset == "synthetic":  # generated on first use, as configs/synthetic.py
        c.data.builder_config, c.data.auto_prepare = "default", True
        c.eval.runs, c.eval.episodes = 2, 200


def get_config(arg: str | None = None):
    local, rest = _split(arg)
    dataset = local.get("dataset", "pascal5i")
    if dataset not in DATASETS:
        raise ValueError(f"configs/dinov2.py: dataset={dataset!r}; expected one of {DATASETS}")
    size = local.get("size") or str(DEFAULT_SIZE.get(dataset, 518))
    if not size.isdigit():
        raise ValueError(f"configs/dinov2.py: size={size!r}; expected an int (multiple of 14)")
    c = base_config()
    _dataset(c, dataset)
    c.data.image_size = (int(size), int(size))
    c.model.encoder = "dinov2_vitb14"
    c.model.pretrained = ""  # the weights come with --checkpoint (evaluate) or are set to train
    return apply_arg(c, rest)

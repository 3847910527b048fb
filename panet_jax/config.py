"""The one schema of every experiment config (``configs/*.py`` start from it).

Every key exists here, so ``--config.a.b=...`` overrides are checked (``lock_config``) and a
typo fails at start. ``parse_arg`` reads the ``configs/x.py:fold=0,shot=5`` suffix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import ml_collections

from panet_jax.models.names import DINOV2_ENCODERS, ENCODERS, frozen_layers

# Keys accepted in the ``--config=configs/x.py:<arg>`` suffix and where they go.
ARG_KEYS = {
    "fold": ("data", "fold", int),
    "shot": ("data", "n_shots", int),
    "way": ("data", "n_ways", int),
    "encoder": ("model", "encoder", str),
    "runlocal": (None, None, bool),
    # configs/folder.py: the user's folder (its name names the prepared dataset) or that name.
    "path": (None, None, str),
    "name": ("data", "builder_config", str),
}


def parse_arg(arg: str | None) -> dict[str, object]:
    """``"fold=1,shot=5,runlocal"`` -> ``{"fold": 1, "shot": 5, "runlocal": True}``."""
    out: dict[str, object] = {}
    if not arg:
        return out
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        if key not in ARG_KEYS:
            raise ValueError(
                f"unknown config argument {key!r} in {arg!r}; expected one of {sorted(ARG_KEYS)}"
            )
        cast = ARG_KEYS[key][2]
        if cast is bool:
            out[key] = value.lower() not in ("0", "false", "no") if value else True
        else:
            try:
                out[key] = cast(value)
            except ValueError as e:
                raise ValueError(f"config argument {key}={value!r} is not a {cast.__name__}") from e
    return out


# ImageNet weights the dataset configs expect (torchvision's file names; the user provides them).
IMAGENET_WEIGHTS = {
    "vgg16": "pretrained_model/vgg16-397923af.pth",
    "resnet50": "pretrained_model/resnet50-0676ba61.pth",
    "resnet101": "pretrained_model/resnet101-63fe2227.pth",
}


def with_imagenet_weights(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``c`` with ``model.pretrained`` set to :data:`IMAGENET_WEIGHTS` of its encoder."""
    c.model.pretrained = IMAGENET_WEIGHTS.get(c.model.encoder, c.model.pretrained)
    return c


def _model_section() -> ml_collections.ConfigDict:
    """The encoder and the head (VGG-16, the official scoring scale)."""
    s = ml_collections.ConfigDict()
    s.encoder = "vgg16"  # 'vgg16' (official) | 'resnet50' | 'resnet101' (layer3, OS 8)
    s.width = 1.0  # channel multiplier (1.0 = real VGG-16)
    s.dtype = "float32"  # compute dtype: 'float32' | 'bfloat16' | 'float64' (x64 checks)
    s.scale = 20.0  # cosine scaling alpha
    # ImageNet init: torchvision vgg16-397923af.pth, Keras VGG16 .h5, or a converted .npz.
    # '' = random init (kaiming normal, as the official code before its weight copy).
    s.pretrained = ""
    # Encoder layers left untouched by training (optax masking): '' none, 'all', or a comma
    # list of top-level layers ('conv1_1,conv1_2' for VGG-16; 'conv1,bn1,layer1' for ResNets).
    s.frozen = ""
    # DINOv2 encoders: the block whose normed patch tokens are the features (-1: the last).
    s.feature_layer = -1
    # Foreground prototypes per class: 1 = PANet's one mean; k > 1 = cosine k-means of the
    # support foreground features (ops.multi_prototype_scores), a pixel scored by its best one.
    s.prototypes_per_class = 1
    return s


def _data_section() -> ml_collections.ConfigDict:
    """Dataset, fold and episode shape (PASCAL-5i fold 0, 1-way 1-shot, 417 x 417)."""
    s = ml_collections.ConfigDict()
    s.dataset = "pascal5i"  # 'pascal5i' | 'coco20i' | 'fss1000' | 'synthetic' | 'folder'
    s.data_dir = ""  # TFDS data_dir with the prepared dataset ('' = TFDS default)
    s.fold = 0
    s.n_ways = 1
    s.n_shots = 1
    s.n_queries = 1
    s.image_size = (417, 417)
    s.coco_split = "panet"  # 'panet' (consecutive blocks) | 'interleaved'
    # TFDS builder config ('' = the builder's default; synthetic: 'default' | 'small' | 'tiny';
    # folder: the prepared folder's name).
    s.builder_config = ""
    # Generate the dataset into data_dir when it is missing (only 'synthetic' can be generated).
    s.auto_prepare = False
    return s


def _train_section() -> ml_collections.ConfigDict:
    """The training loop: 30k steps of one episode, PAR on, logging and checkpoints."""
    s = ml_collections.ConfigDict()
    s.steps = 30_000
    s.per_device_batch = 1  # episodes per device per step
    s.align = True  # prototype alignment regularisation
    s.par_weight = 1.0  # lambda
    s.log_every = 100
    s.image_every = 1000  # prediction images to TensorBoard
    s.checkpoint_every = 1000
    s.keep_checkpoints = 3
    s.eval_after = False  # run the test-fold evaluation when training ends
    # Resume a workdir whose config.json differs in run-defining keys (else: refuse to start).
    s.resume_mismatch_ok = False
    return s


def _optim_section() -> ml_collections.ConfigDict:
    """PyTorch SGD + L2 + MultiStepLR: the official optimiser."""
    s = ml_collections.ConfigDict()
    s.lr = 1e-3
    s.momentum = 0.9
    s.weight_decay = 5e-4  # PyTorch-style L2 added to the gradient, biases included
    s.milestones = (10_000, 20_000, 30_000)
    s.gamma = 0.1
    return s


def _parallel_section() -> ml_collections.ConfigDict:
    """Data parallelism: shard_map or pmap, multi-host start."""
    s = ml_collections.ConfigDict()
    s.impl = "shard_map"  # 'shard_map' (jit(shard_map)) | 'pmap'
    s.distributed = False  # call jax.distributed.initialize() (TPU pods, multi-host)
    s.coordinator_address = ""  # only for non-TPU multi-process runs
    s.num_processes = 0
    s.process_id = -1
    # CPU cross-process collectives for multi-process CPU runs ('' = JAX default, none).
    s.cpu_collectives = "gloo"
    return s


def _eval_section() -> ml_collections.ConfigDict:
    """The test protocol: PANet's 5 x 1000 official episodes by default."""
    s = ml_collections.ConfigDict()
    s.protocol = "panet"  # 'panet' (5 x 1000, trainaug pool) | 'hsnet' (VOC val lists)
    s.runs = 5
    s.episodes = 1000  # per run; protocol 'hsnet' also takes 0: every listed pair once
    s.seed = 1234  # run r uses seed + r
    s.support_annotation = "dense"  # 'dense' | 'scribble' | 'bbox'
    s.per_device_batch = 1
    s.num_images = 4  # overlay PNGs written
    # 'official': replays the official test episodes (test.py's random.Random(seed + run) draw
    # over the per-class image lists, and its scribble picks); needs PANet's per-class lists.
    # 'stateless': per-episode NumPy seeds (other episodes). The HSNet protocol ignores it.
    s.sampler = "official"
    s.split = ""  # TFDS split override ('' = protocol default: trainaug | val | test)
    # Score at each query's raw label size (logits upsampled to it; HSNet use_original_imgsize,
    # PFENet ori_resize) instead of at data.image_size (PANet).
    s.original_size = False
    # PFENet / BAM small-object filter: images with fewer raw pixels of a class are no query or
    # support of that class (they use 2 * 32 * 32 = 2048). 0 = off (PANet, HSNet).
    s.min_object_pixels = 0
    return s


def base_config() -> ml_collections.ConfigDict:
    """The official PANet recipe (VGG-16, PASCAL-5i, 1-way 1-shot, 30k SGD steps)."""
    c = ml_collections.ConfigDict()
    c.seed = 1234
    c.model = _model_section()
    c.data = _data_section()
    c.train = _train_section()
    c.optim = _optim_section()
    c.parallel = _parallel_section()
    c.eval = _eval_section()
    return c


def apply_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Apply ``fold=..,shot=..,way=..`` from the config-file suffix."""
    for key, value in parse_arg(arg).items():
        section, field, _ = ARG_KEYS[key]
        if section is not None:
            c[section][field] = value
    return c


# --------------------------------------------------------------------------------------------
# Validation: every key, one place, before any device or file work.
# --------------------------------------------------------------------------------------------

DTYPES = ("float32", "bfloat16", "float64")
PARALLEL_IMPLS = ("shard_map", "pmap")
MIN_IMAGE_SIDE = 16  # three stride-2 pools leave 2 x 2 features
MAX_IMAGE_SIDE = 4096


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


class _Checker:
    """Collects ``config.<key>=<value>: expected <what>`` failures; raises them together."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.errors: list[str] = []

    def require(self, key: str, ok: bool, expected: str) -> None:
        if not ok:
            section, field = key.split(".")
            self.errors.append(f"config.{key}={self.config[section][field]!r}: expected {expected}")

    def one_of(self, key: str, allowed: Sequence[object]) -> None:
        section, field = key.split(".")
        self.require(key, self.config[section][field] in allowed, f"one of {tuple(allowed)}")

    def int_at_least(self, key: str, low: int) -> None:
        section, field = key.split(".")
        v = self.config[section][field]
        self.require(key, _is_int(v) and v >= low, f"an int >= {low}")

    def number(self, key: str, expected: str, ok) -> None:
        section, field = key.split(".")
        v = self.config[section][field]
        self.require(key, _is_number(v) and ok(v), expected)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ValueError("invalid config: " + "; ".join(self.errors))


def _check_model_and_data(c: _Checker, config: ml_collections.ConfigDict) -> None:
    from panet_jax.data import folds  # pure Python

    d = config.data
    c.one_of("model.encoder", ENCODERS)
    if "prototypes_per_class" in config.model:  # configs saved before the key have 1
        c.int_at_least("model.prototypes_per_class", 1)
    _check_dinov2(c, config)
    c.number("model.width", "a number in (0, 1]", lambda v: 0 < v <= 1)
    c.one_of("model.dtype", DTYPES)
    c.number("model.scale", "a positive number", lambda v: v > 0)
    _check_frozen(c, config)
    c.one_of("data.dataset", sorted(folds.NUM_CLASSES))
    c.one_of("data.coco_split", folds.COCO_SPLITS)
    n_folds = folds.FOLDS.get(d.dataset, folds.NUM_FOLDS)
    c.require("data.fold", _is_int(d.fold) and 0 <= d.fold < n_folds,
              f"an int in 0..{n_folds - 1}")  # fmt: skip
    for key in ("n_shots", "n_queries", "n_ways"):
        c.int_at_least(f"data.{key}", 1)
    size = tuple(d.image_size) if isinstance(d.image_size, tuple | list) else ()
    ok = all(_is_int(s) and MIN_IMAGE_SIDE <= s <= MAX_IMAGE_SIDE for s in size)
    c.require("data.image_size", len(size) == 2 and ok,
              f"(height, width) ints in {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE}")  # fmt: skip
    c.one_of("parallel.impl", PARALLEL_IMPLS)
    if d.dataset in folds.PREPARED_CLASSES:
        c.require("data.builder_config", bool(d.builder_config),
                  f"the prepared {d.dataset} dataset's name (configs/folder.py:path=<folder> "
                  "or :name=<name>)")  # fmt: skip
    if not c.errors and d.dataset not in folds.PREPARED_CLASSES:  # else: when data are opened
        n_train = len(folds.train_classes(d.dataset, d.fold, d.coco_split))
        expected = f"at most the {n_train} training classes of {d.dataset} fold {d.fold}"
        c.require("data.n_ways", d.n_ways <= n_train, expected)


def _check_dinov2(c: _Checker, config: ml_collections.ConfigDict) -> None:
    """ViT keys: images of whole 14-pixel patches, an existing feature block."""
    from panet_jax.models import dinov2  # flax, no device work

    m, d = config.model, config.data
    if m.encoder not in DINOV2_ENCODERS:
        return
    size = tuple(d.image_size) if isinstance(d.image_size, tuple | list) else ()
    c.require("data.image_size", all(_is_int(s) and s % dinov2.PATCH_SIZE == 0 for s in size),
              f"multiples of the ViT patch size {dinov2.PATCH_SIZE} for {m.encoder} "
              "(e.g. (518, 518))")  # fmt: skip
    depth = dinov2.SPECS[m.encoder].depth
    if "feature_layer" in m:
        ok = _is_int(m.feature_layer) and -depth <= m.feature_layer < depth
        c.require("model.feature_layer", ok, f"a block index in -{depth}..{depth - 1}")


def _check_frozen(c: _Checker, config: ml_collections.ConfigDict) -> None:
    m = config.model
    if not isinstance(m.frozen, str):
        c.require("model.frozen", False, "a string: '', 'all' or a comma list of layers")
    elif m.encoder in ENCODERS:
        try:
            frozen_layers(m.encoder, m.frozen)
        except ValueError as e:
            c.errors.append(str(e))


def _check_training(c: _Checker, config: ml_collections.ConfigDict) -> None:
    c.require("model.frozen", str(config.model.frozen).strip() != "all",
              "not 'all' for training: PANet's head has no parameters, so nothing would "
              "train (freeze some layers, or evaluate the ImageNet encoder directly)")  # fmt: skip
    for key in ("steps", "per_device_batch", "log_every", "checkpoint_every", "keep_checkpoints"):
        c.int_at_least(f"train.{key}", 1)
    c.int_at_least("train.image_every", 0)
    c.number("train.par_weight", "a number >= 0", lambda v: v >= 0)
    c.number("optim.lr", "a positive number", lambda v: v > 0)
    c.number("optim.momentum", "a number in [0, 1)", lambda v: 0 <= v < 1)
    c.number("optim.weight_decay", "a number >= 0", lambda v: v >= 0)
    c.number("optim.gamma", "a positive number", lambda v: v > 0)
    milestones = config.optim.milestones
    c.require("optim.milestones", all(_is_int(m) and m >= 0 for m in milestones), "ints >= 0")


def _check_evaluation(c: _Checker, config: ml_collections.ConfigDict) -> None:
    from panet_jax.data import folds, spec  # pure Python

    d, e = config.data, config.eval
    c.one_of("eval.protocol", spec.PROTOCOLS)
    c.one_of("eval.support_annotation", spec.SUPPORT_ANNOTATIONS)
    c.one_of("eval.sampler", spec.SAMPLERS)
    if d.dataset in folds.PREPARED_CLASSES:
        c.require("eval.sampler", e.sampler != "official",
                  f"'stateless' ({d.dataset}: no official episodes exist)")  # fmt: skip
    for key in ("runs", "per_device_batch"):
        c.int_at_least(f"eval.{key}", 1)
    for key in ("num_images", "seed"):
        c.int_at_least(f"eval.{key}", 0)
    if "min_object_pixels" in e:  # configs saved before the option have no filter
        c.int_at_least("eval.min_object_pixels", 0)
    c.require("eval.original_size", isinstance(e.get("original_size", False), bool),
              "True or False")  # fmt: skip
    if e.protocol != "hsnet":
        c.int_at_least("eval.episodes", 1)
        return
    c.require("eval.episodes", _is_int(e.episodes) and e.episodes >= 0,
              "an int >= 0 (protocol 'hsnet': 0 = every pair of its list once)")  # fmt: skip
    c.require("data.n_ways", d.n_ways == 1, "1 (protocol 'hsnet' is 1-way, 1 query)")
    c.require("data.n_queries", d.n_queries == 1, "1 (protocol 'hsnet')")


def validate(config: ml_collections.ConfigDict, *, train: bool, evaluate: bool) -> None:
    """Check every key a training run (``train``) and / or an evaluation (``evaluate``) uses.

    Raises ``ValueError`` listing each bad key as ``config.<key>=<value>: expected <what>``
    (``FileNotFoundError`` for a missing ``model.pretrained``). Touches no device and no data.
    """
    c = _Checker(config)
    _check_model_and_data(c, config)
    if train:
        _check_training(c, config)
    if evaluate or (train and config.train.eval_after):
        _check_evaluation(c, config)
    c.raise_if_any()
    if config.model.dtype == "float64":
        import jax

        if not jax.config.jax_enable_x64:
            raise ValueError(
                "config.model.dtype='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1 (it is "
                "meant for exactness checks, not training)"
            )
    if train and config.model.pretrained and not os.path.exists(config.model.pretrained):
        raise FileNotFoundError(
            f"config.model.pretrained={config.model.pretrained!r} does not exist (cwd "
            f"{os.getcwd()!r}). Expected ImageNet {config.model.encoder} weights (torchvision "
            ".pth, a Keras VGG16 .h5 or a converted .npz), or set "
            "--config.model.pretrained='' for random init."
        )

"""The encoders ``config.model.encoder`` can name, and their layer names (what
``config.model.frozen`` names). The config schema and the model registry both read them here,
so the schema needs none of the registry's building or weight-reading code.
"""

from __future__ import annotations

from panet_jax.models.resnet import STAGES
from panet_jax.models.vgg import VGG16_LAYERS

RESNET_DEPTHS = {"resnet50": 50, "resnet101": 101}
ENCODERS = ("vgg16", *RESNET_DEPTHS)
RESNET_TOP_LEVEL = ("conv1", "bn1", *(stage for stage, *_ in STAGES))


def layer_names(name: str) -> tuple[str, ...]:
    """Top-level parameter groups of encoder ``name`` (what ``config.model.frozen`` names)."""
    if name == "vgg16":
        return tuple(layer for layer, _, _ in VGG16_LAYERS)
    return RESNET_TOP_LEVEL


def frozen_layers(name: str, frozen: str) -> tuple[str, ...]:
    """The layers ``config.model.frozen`` names: ``''`` none, ``'all'`` every one, or a
    comma-separated list of :func:`layer_names`; ``ValueError`` naming the key otherwise."""
    names = layer_names(name)
    if frozen.strip() == "all":
        return names
    chosen = tuple(v.strip() for v in frozen.split(",") if v.strip())
    unknown = [v for v in chosen if v not in names]
    if unknown:
        raise ValueError(
            f"config.model.frozen={frozen!r}: {unknown} are not layers of {name}; expected "
            f"'', 'all' or a comma-separated list of {', '.join(names)}"
        )
    return chosen

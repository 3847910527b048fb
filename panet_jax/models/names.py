"""The encoder names ``config.model.encoder`` accepts (read by the config and the registry)."""

CNN_ENCODERS = ("vgg16", "resnet50", "resnet101")
# facebookresearch/dinov2's torch-hub names (dinov2/hub/backbones.py).
DINOV2_ENCODERS = tuple(
    f"dinov2_vit{size}14{reg}" for reg in ("", "_reg") for size in ("s", "b", "l", "g")
)
ENCODERS = CNN_ENCODERS + DINOV2_ENCODERS

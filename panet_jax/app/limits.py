"""The page's limits on what a user may upload or ask for."""

from panet_jax.inference.predictor import MAX_IMAGE_SIDE, MAX_SUPPORTS

__all__ = ["MAX_CLASSES", "MAX_FILE_SIZE", "MAX_IMAGE_SIDE", "MAX_QUERIES", "MAX_SUPPORTS"]

MAX_CLASSES = 8  # classes segmented in one click
MAX_QUERIES = 16  # query images segmented in one click
MAX_FILE_SIZE = "25mb"  # per uploaded file (Gradio's ``max_file_size``)


def check_image_file(path: str, name: str) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header (nothing is decoded); ``ValueError``
    naming ``name`` for a file that is not an image or has a side over ``MAX_IMAGE_SIDE``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"{name} is not an image file that can be read (PNG, JPEG, ...)") from e
    if max(h, w) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"{name} is {w}x{h} pixels; the largest side allowed is {MAX_IMAGE_SIDE}: "
            "downscale it first"
        )
    return h, w

"""The page: its layout (Gradio Blocks) and the handlers behind its buttons.

Left, the supports: an image editor with a *foreground* and a *background* paint layer, the
annotation kind (:data:`KIND_LABELS`), an optional mask file, and the supports added so far
(grouped into classes by the class name typed with them). Right, the query images, the
Segment button, the message line (timing, or what is wrong with an input), the overlays and
the downloadable masks. Handlers never raise: an unusable input becomes a message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from panet_jax import cli, errors
from panet_jax.app import annotations, limits
from panet_jax.app.segmenter import Segmenter
from panet_jax.app.sessions import Sessions, Support, save_support
from panet_jax.inference.user_images import load_image

KIND_LABELS = {
    "Paint mask": "dense",
    "Scribbles": "scribble",
    "Box": "bbox",
    "Mask file": "file",
}
LAYERS = ["foreground", "background"]
BRUSH_COLORS = ["#e6194b", "#0082c8"]  # foreground red, background blue
# Gradio's sweep of its cache (every 10 min, files older than an hour): a backstop. A tab's
# folder and the cache files it uploaded, sent or was served go when the tab closes
# (sessions.Sessions.close).
CACHE_SWEEP = (600, 3600)
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: nothing fetched
INTRO = """\
### PANet few-shot segmentation
1. Type a class name, upload a **support** image in the editor and mark the object:
   **Paint mask** (paint the object on the *foreground* layer), **Scribbles** (a stroke on the
   object on the *foreground* layer and one on the background on the *background* layer),
   **Box** (drag across the object from corner to corner on the *foreground* layer), or
   **Mask file** (upload a mask, non-zero = object). Click **Add support** (1 to 5 per class).
2. Upload **query** images and click **Segment**. Each class is segmented on its own.
"""
log = logging.getLogger(__name__)


def guarded(n_outputs: int) -> Callable[[Callable[..., tuple]], Callable[..., tuple]]:
    """Turn a handler's exceptions into a message (its last output); others stay unchanged."""

    def wrap(fn: Callable[..., tuple]) -> Callable[..., tuple]:
        @functools.wraps(fn)
        def handler(*args: Any, **kwargs: Any) -> tuple:
            try:
                return fn(*args, **kwargs)
            except errors.EXPECTED_ERRORS as e:
                message = f"⚠️ {cli.error_message(e)}"
            except Exception:  # a bug: the server log has the traceback, the page a line
                log.exception("%s failed", fn.__name__)
                message = "⚠️ Internal error (the server log has the details)."
            return (*[gr.skip()] * (n_outputs - 1), message)

        return handler

    return wrap


def _read_editor(value: dict | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(image uint8 [H, W, 3], RGBA layers)`` of the editor's value (file paths)."""
    background = (value or {}).get("background")
    if not background:
        raise ValueError("no support image: upload one in the editor first")
    limits.check_image_file(background, "the support image")
    image = load_image(background, "the support image")
    layers = []
    for path in value.get("layers") or []:
        with Image.open(path) as layer:
            layers.append(np.asarray(layer.convert("RGBA")))
    if len(layers) < len(LAYERS) or any(x.shape[:2] != image.shape[:2] for x in layers):
        layers = [np.zeros((*image.shape[:2], 4), np.uint8)] * len(LAYERS)
    return image, layers


def _received(*values: Any) -> list[str]:
    """The paths of the files in components' values (an editor's image and layers, a file
    input's file or files)."""
    paths: list[Any] = []
    for value in values:
        if isinstance(value, dict):  # the image editor
            paths += [value.get("background"), value.get("composite"), *(value.get("layers") or [])]
        else:
            paths += value if isinstance(value, list) else [value]
    return [p if isinstance(p, str) else p.name for p in paths if p]


def _served_copies(cache: Path, paths: list[str]) -> list[Path]:
    """Where Gradio keeps its copies of the files a click returns: ``<cache>/<content
    hash>/<name>`` (``gradio.processing_utils.save_file_to_cache``)."""
    from gradio.processing_utils import hash_file

    return [cache / hash_file(p) / Path(p).name for p in paths]


def _gallery(supports: list[Support]) -> list[tuple[str, str]]:
    return [(str(s.preview), f"{s.class_name} · {s.kind}") for s in supports]


def _by_class(supports: list[Support]) -> dict[str, list[Support]]:
    classes: dict[str, list[Support]] = {}
    for s in supports:
        classes.setdefault(s.class_name, []).append(s)
    return classes


def handlers(segmenter: Segmenter, sessions: Sessions) -> dict[str, Callable[..., tuple]]:
    """The page's event handlers, bound to a model and the session folders."""

    @guarded(3)
    def add_support(editor, kind_label, class_name, mask_file, supports, request: gr.Request):
        supports = list(supports or [])
        name = (class_name or "").strip() or "object"
        label = f"class {name!r}, support {sum(s.class_name == name for s in supports) + 1}"
        if sum(s.class_name == name for s in supports) >= limits.MAX_SUPPORTS:
            raise ValueError(f"class {name!r} already has {limits.MAX_SUPPORTS} supports")
        if name not in {s.class_name for s in supports} and (
            len({s.class_name for s in supports}) >= limits.MAX_CLASSES
        ):
            raise ValueError(f"at most {limits.MAX_CLASSES} classes")
        sessions.track(request.session_hash, _received(editor, mask_file))
        image, layers = _read_editor(editor)
        kind = KIND_LABELS.get(kind_label, kind_label)
        fg, bg = annotations.support_masks(kind, layers, label, mask_file, image.shape[:2])
        folder = sessions.folder(request.session_hash)
        supports.append(save_support(folder, name, kind, image, fg, bg))
        gallery = _gallery(supports)
        previews = _served_copies(sessions.cache, [path for path, _ in gallery])
        sessions.track(request.session_hash, previews, served=True)
        return supports, gallery, f"Added {label} ({kind_label})."

    @guarded(3)
    def clear_supports():
        return [], [], "Supports cleared."

    @guarded(3)
    def segment(queries, supports, request: gr.Request):
        folder = sessions.folder(request.session_hash)
        out = folder / "results" / f"{sum(1 for _ in folder.glob('results/*')):03d}"
        paths = _received(list(queries or []))
        sessions.track(request.session_hash, paths)
        result = segmenter.segment(_by_class(list(supports or [])), paths, out)
        overlays = [(str(p), caption) for p, caption in result.overlays]
        served = [str(p) for p, _ in result.overlays] + [str(p) for p in result.masks]
        sessions.track(request.session_hash, _served_copies(sessions.cache, served), served=True)
        return overlays, [str(p) for p in result.masks], result.message

    def received(value: Any, request: gr.Request) -> None:
        """An upload arrived (editor image, mask file, queries): its tab now holds it, even if
        no click ever uses it."""
        sessions.track(request.session_hash, _received(value))

    def close_session(request: gr.Request):
        sessions.close(request.session_hash)
        segmenter.forget()

    return {"add_support": add_support, "clear_supports": clear_supports,
            "segment": segment, "received": received,
            "close_session": close_session}  # fmt: skip


def theme() -> gr.themes.Base:
    """Gradio's default look with system fonts (its default loads web fonts)."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])


def build(segmenter: Segmenter, sessions: Sessions) -> gr.Blocks:
    """The page (call ``.launch`` on it)."""
    h = handlers(segmenter, sessions)
    with gr.Blocks(title="PANet few-shot segmentation", analytics_enabled=False,
                   delete_cache=CACHE_SWEEP) as demo:  # fmt: skip
        supports = gr.State([])
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    class_name = gr.Textbox("object", label="Class name", elem_id="class-name",
                                            scale=1)  # fmt: skip
                    kind = gr.Radio(list(KIND_LABELS), value="Paint mask", label="Annotation",
                                    elem_id="annotation", scale=2)  # fmt: skip
                editor = gr.ImageEditor(
                    type="filepath", image_mode="RGBA", sources=["upload"], format="png",
                    label="Support image", elem_id="support-editor", transforms=(),
                    brush=gr.Brush(default_size=8, colors=BRUSH_COLORS, color_mode="defaults"),
                    layers=gr.LayerOptions(allow_additional_layers=False, layers=LAYERS),
                )  # fmt: skip
                mask_file = gr.File(label="Mask file (for 'Mask file')", type="filepath",
                                    elem_id="mask-file", height=120)  # fmt: skip
                add = gr.Button("Add support", elem_id="add-support")
                gallery = gr.Gallery(label="Supports", elem_id="supports", columns=5,
                                     height=240, allow_preview=False)  # fmt: skip
                clear = gr.Button("Clear supports", elem_id="clear-supports", size="sm")
            with gr.Column():
                queries = gr.File(label="Query images", file_count="multiple", type="filepath",
                                  elem_id="queries", height=140)  # fmt: skip
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                message = gr.Markdown(elem_id="message")
                overlays = gr.Gallery(label="Result", elem_id="overlays", columns=2,
                                      height="auto")  # fmt: skip
                masks = gr.File(label="Masks (PNG at each query's size)", elem_id="masks",
                                file_count="multiple")  # fmt: skip
        add.click(h["add_support"], [editor, kind, class_name, mask_file, supports],
                  [supports, gallery, message])  # fmt: skip
        clear.click(h["clear_supports"], None, [supports, gallery, message])
        run.click(h["segment"], [queries, supports], [overlays, masks, message])
        editor.upload(h["received"], editor, None, show_progress="hidden")
        for upload in (mask_file, queries):
            upload.upload(h["received"], upload, None, show_progress="hidden")
        demo.unload(h["close_session"])
    return demo

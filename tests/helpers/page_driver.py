"""Drive the app's page in Debian's Chromium with Playwright (no browser download).

Used by ``tests/app/test_page.py`` (which also makes the docs' picture). The page's server is
started as a user would (``experiments/app.py``) on a tiny model; image coordinates are mapped
to the editor's canvas from the rendered image, found by the green frame every test image
carries.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from paths import EXPERIMENTS
from PIL import Image

CHROMIUM = os.environ.get("PANET_CHROMIUM", "/usr/bin/chromium")
WORKING_SIZE = (64, 64)
FRAME = (0, 255, 0)  # the test images' 2-px frame, to find them on the canvas
MESSAGE = "#message .prose"
TIMEOUT_MS = 120_000  # a loaded 2-core machine


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[app]')"
    if shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import gradio  # noqa: F401
    except ImportError:
        return "gradio is not installed (pip install -e '.[app]')"
    return None


def scene(rng: np.random.Generator, h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A noisy image with a bright striped box ``(y0, x0, y1, x1)`` and a green frame."""
    image = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
    y0, x0, y1, x1 = box
    image[y0:y1, x0:x1] = (np.arange(x1 - x0) // 3 % 2 * 80 + 150).astype(np.uint8)[None, :, None]
    image[:2], image[-2:], image[:, :2], image[:, -2:] = FRAME, FRAME, FRAME, FRAME
    return image


def tiny_model(path: Path) -> Path:
    """A randomly initialised width-1/8 VGG-16 saved as ``.npz`` (the converted-weights format)."""
    import jax
    import jax.numpy as jnp

    from panet_jax.models.vgg import VGG16Encoder
    from panet_jax.models.weights import vgg as pretrained

    encoder = VGG16Encoder(width=0.125)
    params = jax.jit(encoder.init)(jax.random.key(0), jnp.zeros((1, *WORKING_SIZE, 3)))["params"]
    pretrained.save_npz(params, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``experiments/app.py`` in a subprocess, on a free localhost port."""

    def __init__(self, checkpoint: Path, temp_dir: Path, log: Path):
        self.port, self.temp_dir = free_port(), temp_dir
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            PYTHONPATH=str(EXPERIMENTS.parent),
            JAX_DISABLE_MOST_OPTIMIZATIONS="true",
        )  # the tests' XLA setting (conftest)
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(EXPERIMENTS / "app.py"), f"--checkpoint={checkpoint}",
             f"--image_size={WORKING_SIZE[0]},{WORKING_SIZE[1]}", f"--port={self.port}",
             f"--temp_dir={temp_dir}"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.wait_up(log)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_up(self, log: Path, timeout: float = 180.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited ({self.proc.returncode}):\n{log.read_text()}")
            if self.answers():
                return
            time.sleep(0.5)
        raise TimeoutError(f"the app did not answer in {timeout} s:\n{log.read_text()}")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            code = self.proc.wait(30)
        finally:
            self._log.close()
        return code


def launch(playwright):
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=["--no-sandbox"],  # root in CI
    )


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#support-editor .pixi-target canvas", state="attached")
    return page


def message(page) -> str:
    return page.inner_text(MESSAGE).strip()


def click_and_wait(page, selector: str) -> str:
    """Click ``selector`` and return the message line once it changes."""
    before = message(page)
    page.click(selector)
    page.wait_for_function(
        "([sel, old]) => { const e = document.querySelector(sel);"
        " return e && e.innerText.trim() !== old && e.innerText.trim() !== ''; }",
        arg=[MESSAGE, before],
    )
    return message(page)


def upload_support(page, path: Path, hw: tuple[int, int]) -> tuple[float, float, float]:
    """Upload ``path`` into the editor; return its on-screen ``(left, top, scale)``."""
    page.set_input_files('#support-editor input[data-testid="file-upload"]', str(path))
    canvas = page.locator("#support-editor .pixi-target canvas")
    box = None
    for _ in range(60):
        time.sleep(0.5)
        box = canvas.bounding_box()
        shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
        green = (shot[..., 1] > 200) & (shot[..., 0] < 80) & (shot[..., 2] < 80)
        if green.sum() > 100:
            break
    else:
        raise TimeoutError("the support image did not appear on the editor's canvas")
    ys, xs = np.nonzero(green)
    scale = (xs.max() + 1 - xs.min()) / hw[1]
    ratio = box["width"] / shot.shape[1]  # CSS px per screenshot px (1 here)
    return box["x"] + xs.min() * ratio, box["y"] + ys.min() * ratio, scale * ratio


def stroke(page, where: tuple[float, float, float], points: list[tuple[float, float]]) -> None:
    """Draw one brush stroke through image ``(x, y)`` points."""
    left, top, scale = where
    xy = [(left + (x + 0.5) * scale, top + (y + 0.5) * scale) for x, y in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for p in xy[1:]:
        page.mouse.move(*p, steps=2)
    page.mouse.up()


def use_layer(page, index: int) -> None:
    """Switch the editor's paint layer (1 = foreground, 2 = background)."""
    page.click('#support-editor button[aria-label="Show Layers"]')
    page.click(f'#support-editor button[aria-label="layer-{index}"]')
    page.keyboard.press("Escape")


def choose(page, label: str) -> None:
    page.locator("#annotation label", has_text=label).click()


def _query_files(page) -> list[str]:
    """The file names the query list shows (its rows' labels; the visible text splits a name
    into stem and extension)."""
    return page.locator("#queries td.filename").evaluate_all(
        "cells => cells.map(c => c.getAttribute('aria-label'))"
    )


def add_queries(page, paths: list[Path]) -> None:
    """Replace the query list by ``paths`` (uploaded once; re-sent only if none arrived)."""
    clear = page.locator('#queries button[aria-label="Clear"]')
    if clear.count():  # the file list appends: start from an empty one
        clear.click()
        page.locator('#queries button[aria-label="Clear"]').wait_for(state="detached")
    want = sorted(p.name for p in paths)
    for attempt in range(2):
        if attempt == 0 or not _query_files(page):
            page.set_input_files('#queries input[type="file"]', [str(p) for p in paths])
        try:
            page.wait_for_function(
                "([sel, n]) => document.querySelectorAll(sel).length >= n",
                arg=["#queries td.filename", len(paths)], timeout=TIMEOUT_MS,
            )  # fmt: skip
            break
        except Exception:
            if attempt == 1:
                raise
    assert sorted(_query_files(page)) == want, _query_files(page)


def result_masks(page) -> dict[str, np.ndarray]:
    """The downloadable mask files, fetched through their links: ``{file name: array}``."""
    out = {}
    for link in page.locator("#masks a[href]").all():
        href = link.get_attribute("href")
        body = page.request.get(href).body()
        name = href.rsplit("/", 1)[-1]
        out[name] = np.asarray(Image.open(io.BytesIO(body)))
    return out


def save_screenshot(page, path: str | Path, width: int = 1000) -> None:
    """The whole page as a small PNG (``width`` px wide, 256 colours)."""
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    small = shot.resize((width, round(shot.height * width / shot.width)), Image.LANCZOS)
    small.quantize(256).save(path, optimize=True)

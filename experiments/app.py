r"""A local web page for segmenting your own images with a trained PANet.

    python experiments/app.py --checkpoint=runs/synthetic          # http://127.0.0.1:7860

``--checkpoint``: whatever ``segment.py`` / ``panet_jax.predict`` accept (a training workdir,
its checkpoints or a step directory, or a weight file). The page runs ``panet_jax.Predictor``
(what ``panet_jax.predict`` runs), so its masks are the ones ``segment.py`` writes for the same
inputs. It binds to 127.0.0.1 (``--host`` to change), contacts no outside service (no
analytics, no share link, no web fonts), limits uploads (``limits.MAX_FILE_SIZE``,
``limits.MAX_IMAGE_SIDE``), serves only files in its own temporary folder, deletes a tab's
files when the tab closes and the folder when the server stops.
"""

from __future__ import annotations

import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported

from absl import flags

from panet_jax import cli
from panet_jax.inference import model_flags

FLAGS = flags.FLAGS
model_flags.define()
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (127.0.0.1: this machine only).")
flags.DEFINE_integer("port", 7860, "Port to serve on.")
flags.DEFINE_string("temp_dir", None, "Folder for uploads and results (default: a new "
                    "temporary folder); deleted when the server stops.")  # fmt: skip


def _stop(signum: int, frame: object) -> None:
    sys.exit(0)  # unwinds through main's finally: the temporary folder is removed


def main(argv: list[str]) -> None:
    from panet_jax.app import limits
    from panet_jax.app.segmenter import Segmenter
    from panet_jax.app.sessions import Sessions

    if not 1 <= FLAGS.port <= 65535:
        raise cli.FlagError(f"--port={FLAGS.port}: expected 1 to 65535")
    model_arguments = model_flags.model_arguments()
    sessions = Sessions(FLAGS.temp_dir)
    os.environ["GRADIO_TEMP_DIR"] = str(sessions.cache)  # its uploads and served files
    signal.signal(signal.SIGTERM, _stop)
    demo = None
    try:
        segmenter = Segmenter(FLAGS.checkpoint, **model_arguments)
        h, w = segmenter.settings.image_size
        print(f"compiling for {w}x{h} (1 shot) ...", flush=True)
        segmenter.warm_up()
        from panet_jax.app import page

        demo = page.build(segmenter, sessions)
        demo.launch(
            server_name=FLAGS.host, server_port=FLAGS.port, share=False,
            max_file_size=limits.MAX_FILE_SIZE, theme=page.theme(), footer_links=[],
            show_error=False, ssr_mode=False, mcp_server=False, prevent_thread_lock=True,
        )  # fmt: skip
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if demo is not None:
            demo.close()  # no request is still writing to the folder
        sessions.close_all()


if __name__ == "__main__":
    cli.run(main)

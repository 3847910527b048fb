"""A local web page (Gradio) for segmenting a user's own images: ``experiments/app.py``.

Modules, each one job: :mod:`~panet_jax.app.limits` (the page's limits), :mod:`~.annotations`
(the editor's layers -> support fg / bg masks, by the evaluation's weak-support rules),
:mod:`~.sessions` (one temporary folder per browser tab), :mod:`~.segmenter` (the model,
loaded once, running :func:`panet_jax.predict`), :mod:`~.page` (the page's layout and
handlers). Gradio is imported only by :mod:`~.page`.
"""

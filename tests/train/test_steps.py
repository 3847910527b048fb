"""The train step reports the prototype distances with PAR off (``par_weight=0``; with PAR on
they are checked end to end in ``tests/analysis/test_runner.py``), and computing them changes
nothing: the update equals one from ``panet_loss`` alone."""

from __future__ import annotations

import jax
import numpy as np
import tolerances as tol
import train_helpers

from panet_jax.model import PROTOTYPE_DISTANCE_KEYS, panet_loss
from panet_jax.train import state as ts
from panet_jax.train import steps


def reference_update(state, batch, par_weight):
    def loss(p):
        return panet_loss(state.apply_fn(state.variables(p), batch), batch, par_weight=par_weight)[
            0
        ]

    return state.apply_gradients(grads=jax.grad(loss)(state.params))


def test_distances_reported_without_par_and_update_unchanged():
    par_weight = 0.0
    c = train_helpers.tiny_config(train__par_weight=par_weight, train__per_device_batch=2)
    c.model.dtype = "float64"  # the same gradient, exactly: float64 leaves rounding only
    with jax.enable_x64(True):
        state = ts.create_train_state(c, jax.random.key(0))
        batch = train_helpers.random_batch(0, 2)
        new, metrics = jax.jit(steps.make_train_step(c, axis_name=None))(state, batch)
        want = jax.jit(reference_update, static_argnums=2)(state, batch, par_weight)
        before = train_helpers.flat_params(state.params)
        got, ref = train_helpers.flat_params(new.params), train_helpers.flat_params(want.params)
    assert got["encoder/conv1_1/kernel"].dtype == np.float64
    assert set(PROTOTYPE_DISTANCE_KEYS) <= set(metrics)
    for k in PROTOTYPE_DISTANCE_KEYS:
        assert np.isfinite(float(metrics[k])) and float(metrics[k]) > 0, k
    assert float(metrics["loss_par"]) > 0  # PAR's loss is computed (and reported) at weight 0
    assert max(tol.rel_err(got[k] - b, ref[k] - b) for k, b in before.items()) <= tol.EXACT64

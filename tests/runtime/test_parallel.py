"""Data parallelism: shard_map and literal pmap (4 host devices) equal the single-device step
on the same global batch, and the mesh helpers place arrays as documented."""

import jax
import numpy as np
import tolerances as tol
import train_helpers as h
from jax.sharding import AxisType

from panet_jax.runtime import parallel


def test_shard_map_and_pmap_equal_single_device_on_4_devices_float64():
    """The formulations are equal: params and metrics after 2 steps (2 episodes per device,
    global batch 8, so the momentum is exercised) agree to float64 rounding."""
    out = h.run_worker("parallel-check", "2", "2", "float64", devices=4)
    assert out["devices"] == 4 and out["param_dtype"] == "float64"
    for impl in ("shard_map", "pmap"):
        r = out[impl]
        assert r["step"] == 2 and r["sharding_devices"] == 4, impl
        assert r["param_rel_diff"] < tol.EXACT64, (impl, r)
        assert max(r["metric_rel_diff"]) < tol.EXACT64, (impl, r)


def test_shard_map_and_pmap_match_single_device_on_4_devices_float32():
    """The training dtype. The first step's losses come from identical params, so only the
    forward's rounding separates them: 13 convs of fan-in <= 9 x 32 (width 1/16) give
    ~1.3e-5 relative (tolerances.layers_rel), and the sharded psum of the loss adds
    ~sqrt(8) * 2^-24. Later steps start from params whose gradients may differ by ReLU /
    max-pool tie flips (continuous forward, discontinuous backward), so their agreement is
    left to the float64 twin."""
    out = h.run_worker("parallel-check", "2", "2", "float32", devices=4)
    bound = 5 * tol.layers_rel(13, 9 * 32) + tol.dot_rel(8)
    for impl in ("shard_map", "pmap"):
        r = out[impl]
        assert r["step"] == 2 and r["sharding_devices"] == 4, impl
        assert r["metric_rel_diff"][0] < bound, (impl, r)
    assert all(np.isfinite(list(m.values())).all() for m in out["metrics"])


def test_mesh_and_placement_helpers():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == (parallel.BATCH_AXIS,)
    assert mesh.axis_types == (AxisType.Auto,)
    batch = h.random_batch(0, mesh.devices.size * 2)
    g = parallel.host_batch_to_global(batch, mesh)
    assert g["query_images"].shape == batch["query_images"].shape
    np.testing.assert_array_equal(np.asarray(g["query_labels"]), batch["query_labels"])
    tree = parallel.replicate({"a": np.arange(3.0), "b": jax.numpy.ones(2)}, mesh)
    assert tree["a"].sharding.is_fully_replicated
    rows = parallel.local_rows(g["query_labels"], mesh)
    np.testing.assert_array_equal(rows, batch["query_labels"])

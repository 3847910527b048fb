"""Data parallelism: shard_map and literal pmap (4 host devices) equal the single-device step
on the same global batch, and the mesh helpers place arrays as documented."""

import jax
import numpy as np
import train_helpers as h
from jax.sharding import AxisType

from panet_jax import parallel


def test_shard_map_and_pmap_equal_single_device_on_4_devices():
    # 2 episodes per device (global batch 8), 2 steps so the momentum is exercised too.
    out = h.run_worker("parallel-check", "2", "2", devices=4)
    assert out["devices"] == 4
    for impl in ("shard_map", "pmap"):
        r = out[impl]
        assert r["step"] == 2, impl
        assert r["sharding_devices"] == 4, impl
        assert r["max_param_diff"] < 1e-6, (impl, r)
        assert r["max_metric_diff"] < 1e-5, (impl, r)


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
    split = parallel.split_for_pmap(h.random_batch(0, 6), 2)
    assert split["support_images"].shape[:3] == (2, 3, 1)

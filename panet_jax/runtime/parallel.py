"""Running the per-device steps of :mod:`panet_jax.train.steps` on all devices: meshes, shardings,
``jit(shard_map)`` / ``pmap``, host <-> global arrays, and ``jax.distributed`` start-up.

The same step function runs as

* ``impl='shard_map'`` (default): ``jax.jit(jax.shard_map(step, mesh, in_specs=(P(),
  P('batch')), out_specs=(P(), P())))`` over a global ``[devices * per_device, ...]`` batch.
  This is what ``jax.pmap`` itself compiles to since JAX 0.8 (``docs/migrate_pmap.md``),
  written out: explicit shardings, working donation, no host-local round trip, and
  ``check_vma`` verifies that the state really comes out replicated.
* ``impl='pmap'``: literal ``jax.pmap(step, axis_name='batch', in_axes=(None, 0),
  out_axes=(None, None))`` over a host batch reshaped to ``[local_devices, per_device, ...]``.

Both equal the single-device step on the same global batch (up to float summation order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax.training import common_utils
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from panet_jax.runtime import xla_options

BATCH_AXIS = "batch"
HostStep = Callable[[Any, dict[str, np.ndarray]], tuple[Any, dict[str, jax.Array]]]
Options = dict[str, Any] | None


def _options(kind: str, platform: str, given: Options) -> Options:
    """``given`` if not None (``{}``: XLA's own defaults), else the per-executable options of
    :func:`panet_jax.runtime.xla_options.compiler_options` for ``kind`` on ``platform``."""
    if given is not None:
        return given or None
    return xla_options.compiler_options(kind, platform)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``('batch',)`` mesh over ``devices`` (default: all devices of all processes).

    ``AxisType.Auto``: shardings are annotations (GSPMD), not part of the array types;
    ``jax.make_mesh`` would default to ``Explicit`` in JAX >= 0.9.
    """
    devs = np.asarray(jax.devices() if devices is None else list(devices))
    return Mesh(devs, (BATCH_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over ``'batch'``."""
    return NamedSharding(mesh, P(BATCH_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's ``[host_batch, ...]`` arrays -> global ``[global_batch, ...]`` arrays
    sharded over ``'batch'`` (``jax.make_array_from_process_local_data``)."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf fully replicated on ``mesh``. Leaves must hold the same value on
    every process (e.g. built from the same seed, or restored from one checkpoint)."""
    sharding = replicated_sharding(mesh)

    def put(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.sharding == sharding:
                return x
            return jax.jit(lambda y: y, out_shardings=sharding)(x)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def local_rows(x: jax.Array, mesh: Mesh) -> np.ndarray:
    """This process's rows of a ``'batch'``-sharded global array, in order."""
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, P(BATCH_AXIS)))


def on_batch(
    fn: Callable[..., Any],
    mesh: Mesh,
    n_batched: int,
    out_specs: Any,
    compiler_options: Options = None,
) -> Callable:
    """``jit(shard_map(fn))`` for ``fn(replicated, *batched)``: the first argument replicated,
    the next ``n_batched`` split over ``'batch'``. ``compiler_options``: None = the ``'eval'``
    ones of :mod:`panet_jax.runtime.xla_options`, ``{}`` = XLA's defaults."""
    in_specs = (P(), *(P(BATCH_AXIS),) * n_batched)
    options = _options("eval", mesh.devices.flat[0].platform, compiler_options)
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
    return jax.jit(mapped, compiler_options=options)


def shard_map_step(step: Callable, mesh: Mesh, compiler_options: Options = None) -> Callable:
    """``jit(shard_map(step))``: (replicated state, global ``'batch'``-sharded batch) ->
    (replicated state, replicated metrics); the input state is donated. ``compiler_options``:
    None = the ``'train'`` ones of :mod:`panet_jax.runtime.xla_options`, ``{}`` = XLA's defaults."""
    mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(BATCH_AXIS)), out_specs=(P(), P()))
    options = _options("train", mesh.devices.flat[0].platform, compiler_options)
    return jax.jit(mapped, donate_argnums=0, compiler_options=options)


def pmap_step(
    step: Callable, devices: Sequence[jax.Device] | None = None, compiler_options: Options = None
) -> Callable:
    """Literal ``jax.pmap`` over ``devices`` (default: the local devices): batch
    ``[devices, per_device, ...]``, state and outputs unmapped (``in_axes=None`` /
    ``out_axes=None``); the state is donated. ``compiler_options`` as :func:`shard_map_step`;
    ``jax.pmap`` takes none, so with options it is lowered and compiled on each new argument
    signature (single-process only: a multi-process pmap keeps XLA's defaults)."""
    pmapped = jax.pmap(
        step,
        axis_name=BATCH_AXIS,
        in_axes=(None, 0),
        out_axes=(None, None),
        donate_argnums=(0,),
        devices=None if devices is None else list(devices),
    )
    platform = (next(iter(devices)) if devices else jax.local_devices()[0]).platform
    options = _options("train", platform, compiler_options)
    if options is None or jax.process_count() > 1:
        return pmapped
    compiled: dict[Any, Any] = {}

    def call(*args: Any) -> Any:
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves))
        if key not in compiled:
            compiled[key] = pmapped.lower(*args).compile(options)
        return compiled[key](*args)

    call.lower = pmapped.lower  # type: ignore[attr-defined]  # as jax.pmap's (no options)
    return call


def make_parallel_step(step: Callable, impl: str, mesh: Mesh) -> HostStep:
    """``(state replicated on mesh, host batch of numpy arrays) -> (state, metrics)`` running
    the per-device ``step`` as ``impl`` (``'shard_map'`` or ``'pmap'``); feeding the batch to
    the devices is included."""
    if impl == "shard_map":
        compiled = shard_map_step(step, mesh)
        return lambda state, batch: compiled(state, host_batch_to_global(batch, mesh))
    if impl == "pmap":
        compiled = pmap_step(step)
        if jax.process_count() == 1:
            return lambda state, batch: compiled(state, common_utils.shard(batch))

        def multi_process(state, batch):
            # pmap returns host-local arrays (over this process's devices); make the state a
            # global replicated array again so it can be checkpointed and used beside
            # shard_map code (the per-step round trip the pmap migration guide warns about).
            state, step_metrics = compiled(state, common_utils.shard(batch))
            return multihost_utils.host_local_array_to_global_array(state, mesh, P()), step_metrics

        return multi_process
    raise ValueError(f"config.parallel.impl={impl!r}; expected 'shard_map' or 'pmap'")


def global_batch_size(config: ml_collections.ConfigDict, mesh: Mesh) -> int:
    """Episodes per step: global device count x ``train.per_device_batch``."""
    return mesh.devices.size * int(config.train.per_device_batch)


def host_batch_size(config: ml_collections.ConfigDict, mesh: Mesh) -> int:
    """Episodes this process loads per step: local device count x ``per_device_batch``."""
    return len(mesh.local_devices) * int(config.train.per_device_batch)


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """``jax.distributed.initialize`` when ``config.parallel.distributed`` (explicit
    coordinator / num_processes / process_id when given, else auto-detected, e.g. TPU).
    Idempotent; on CPU it first selects ``config.parallel.cpu_collectives`` (gloo)."""
    p = config.parallel
    if not p.distributed or jax.distributed.is_initialized():
        return
    if p.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", p.cpu_collectives)
    kwargs: dict[str, Any] = {}
    if p.coordinator_address:
        kwargs["coordinator_address"] = p.coordinator_address
    if p.num_processes > 0:
        kwargs["num_processes"] = p.num_processes
    if p.process_id >= 0:
        kwargs["process_id"] = p.process_id
    jax.distributed.initialize(**kwargs)

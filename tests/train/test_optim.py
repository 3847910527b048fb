"""The optimiser equals PyTorch SGD(momentum, weight_decay) + MultiStepLR, step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tolerances as tol

from panet_jax.config import base_config
from panet_jax.train import optim


def _torch_sgd_numpy(params, grads_seq, lrs, momentum, wd):
    """Hand-written ``torch.optim.SGD`` (dampening 0, no Nesterov): d = g + wd*w;
    v = d on the first step, else mu*v + d; w -= lr*v."""
    w = {k: v.copy() for k, v in params.items()}
    buf = {}
    for grads, lr in zip(grads_seq, lrs, strict=True):
        for k in w:
            d = grads[k] + wd * w[k]
            buf[k] = d.copy() if k not in buf else momentum * buf[k] + d
            w[k] = w[k] - lr * buf[k]
    return w


def test_official_schedule_values():
    c = base_config()
    sched = optim.schedule_from_config(c.optim)
    for step, lr in [
        (0, 1e-3),
        (9999, 1e-3),
        (10000, 1e-4),
        (19999, 1e-4),
        (20000, 1e-5),
        (29999, 1e-5),
    ]:
        assert float(sched(step)) == pytest.approx(lr, rel=1e-6), step


# Each SGD step is 5 roundings (wd * w, + g, mu * v, + d, w - lr * v) that feed into the next
# step through w and v: after n steps a float32 result is within ~5 n u (normwise, |values| ~1).
def _sgd_rtol(dtype, steps: int) -> float:
    return tol.EXACT64 if dtype == np.float64 else 5 * steps * tol.U32


def _close(got, want, rtol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.max(np.abs(got - want)) <= rtol * max(np.max(np.abs(want)), 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_pytorch_sgd_across_a_milestone(dtype):
    rng = np.random.default_rng(0)
    params = {
        "kernel": rng.normal(size=(3, 4)).astype(dtype),
        "bias": rng.normal(size=(4,)).astype(dtype),
    }  # wd applies to biases too
    steps, milestones, gamma, lr, mu, wd = 6, (2, 4), 0.1, 0.5, 0.9, 0.05
    grads_seq = [
        {k: rng.normal(size=v.shape).astype(dtype) for k, v in params.items()} for _ in range(steps)
    ]
    lrs = [lr * gamma ** sum(s >= m for m in milestones) for s in range(steps)]
    want = _torch_sgd_numpy(
        {k: v.astype(np.float64) for k, v in params.items()},
        [{k: v.astype(np.float64) for k, v in g.items()} for g in grads_seq],
        lrs,
        mu,
        wd,
    )

    c = base_config()
    c.optim.lr, c.optim.momentum, c.optim.weight_decay = lr, mu, wd
    c.optim.milestones, c.optim.gamma = milestones, gamma
    with jax.enable_x64(dtype == np.float64):
        tx = optim.make_optimizer(c.optim)
        p = jax.tree.map(jnp.asarray, params)
        state = tx.init(p)
        for g in grads_seq:
            updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
            p = optax.apply_updates(p, updates)
        assert p["kernel"].dtype == dtype
    for k in params:
        _close(p[k], want[k], _sgd_rtol(dtype, steps))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_if_installed(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(5,)).astype(dtype)
    grads = [rng.normal(size=(5,)).astype(dtype) for _ in range(5)]
    t = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD([t], lr=0.3, momentum=0.9, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3], gamma=0.1)
    for g in grads:
        t.grad = torch.tensor(g)
        opt.step()
        sched.step()
    with jax.enable_x64(dtype == np.float64):
        tx = optim.pytorch_sgd(optim.lr_schedule(0.3, (3,), 0.1), 0.9, 0.01)
        p = jnp.asarray(w0)
        s = tx.init(p)
        for g in grads:
            u, s = tx.update(jnp.asarray(g), s, p)
            p = optax.apply_updates(p, u)
        assert p.dtype == dtype
    # Two implementations, each within _sgd_rtol of the exact values.
    _close(p, t.detach().numpy(), 2 * _sgd_rtol(dtype, len(grads)))

"""``config.model.encoder`` and ``config.model.frozen`` through the whole stack: a 1/16-width
ResNet trains on the synthetic set with its BatchNorm statistics untouched, frozen layers stay
bit-identical while the loss falls (optax masking), ImageNet-format ResNet weights are imported
by ``create_train_state``, and a ResNet run is checkpointed, reloaded and used by ``predict``."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import train_helpers as h

from panet_jax import config as config_lib
from panet_jax.data import builders, input_pipeline
from panet_jax.inference import loading, predictor
from panet_jax.models import names
from panet_jax.train import state as ts
from panet_jax.train import steps


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    builders.prepare("synthetic_fss", data_dir=d, config="tiny")
    return str(d)


@pytest.fixture(scope="module")
def fixed_batch(data_dir):
    c = h.tiny_config(data_dir, train__per_device_batch=2)
    with input_pipeline.train_batches(c, batch_size=2, start_step=0, num_steps=1,
                                      process_index=0, process_count=1) as batches:  # fmt: skip
        return next(batches)


def _train(config, batch, n_steps: int):
    step = jax.jit(steps.make_train_step(config, axis_name=None))
    first = ts.create_train_state(config, jax.random.key(0))
    state, losses = first, []
    for _ in range(n_steps):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert all(map(math.isfinite, losses)), losses
    return first, state, losses


def _leaves(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(tree)}


@pytest.mark.parametrize("encoder", ["resnet50", "resnet101"])
def test_a_small_resnet_learns_and_keeps_its_batch_norm_statistics(data_dir, fixed_batch, encoder):
    c = h.tiny_config(data_dir, model__encoder=encoder, train__per_device_batch=2)
    config_lib.validate(c, train=True, evaluate=True)
    first, state, losses = _train(c, fixed_batch, 10)
    assert losses[-1] < 0.8 * losses[0], losses
    assert set(state.batch_stats["encoder"]) == set(names.RESNET_TOP_LEVEL) - {"conv1"}
    # Frozen statistics: every mean / var is bit-identical after training.
    before, after = _leaves(first.batch_stats), _leaves(state.batch_stats)
    assert before.keys() == after.keys() and all(
        np.array_equal(before[k], after[k]) for k in before
    )
    # ... while every param group trains (BN scale / bias included).
    moved = _leaves(jax.tree.map(lambda a, b: np.any(a != b), first.params, state.params))
    assert all(moved.values()), [k for k, v in moved.items() if not v]


@pytest.mark.parametrize(
    "encoder, frozen",
    [("resnet50", "conv1,bn1,layer1,layer2"), ("vgg16", "conv1_1,conv1_2,conv2_1,conv2_2")],
)
def test_frozen_layers_stay_bit_identical_while_the_loss_falls(
    data_dir, fixed_batch, encoder, frozen
):
    c = h.tiny_config(
        data_dir, model__encoder=encoder, model__frozen=frozen, train__per_device_batch=2
    )
    first, state, losses = _train(c, fixed_batch, 12)
    assert losses[-1] < 0.8 * losses[0], losses
    chosen = set(frozen.split(","))
    for layer in names.layer_names(encoder):
        same = jax.tree.map(
            np.array_equal, first.params["encoder"][layer], state.params["encoder"][layer]
        )
        assert all(jax.tree.leaves(same)) == (layer in chosen), layer
    # optax.set_to_zero keeps no momentum for the frozen layers.
    traced = {jax.tree_util.keystr(k) for k, _ in jax.tree.leaves_with_path(state.opt_state)}
    assert not any(f"['encoder']['{layer}']" in k for k in traced for layer in chosen)
    assert any("['encoder']" in k for k in traced)


@pytest.mark.parametrize(
    "frozen, train, match",
    [
        ("layer9", False, "'layer9'] are not layers of resnet50"),
        ("all", True, "nothing would train"),
        ("layer1,conv1_1", False, "'conv1_1'] are not layers of resnet50"),
    ],
)
def test_bad_frozen_values_are_refused_naming_the_key(frozen, train, match):
    c = h.tiny_config(model__encoder="resnet50", model__frozen=frozen)
    with pytest.raises(ValueError, match=r"config\.model\.frozen=.*" + match.replace("[", r"\[")):
        config_lib.validate(c, train=train, evaluate=True)


def test_frozen_all_still_evaluates():
    c = h.tiny_config(model__encoder="resnet50", model__frozen="all")
    config_lib.validate(c, train=False, evaluate=True)
    assert names.frozen_layers("resnet50", "all") == names.RESNET_TOP_LEVEL


def test_imagenet_resnet_weights_are_imported_by_create_train_state(tmp_path):
    torch = pytest.importorskip("torch")
    from panet_jax.models.weights import resnet as resnet_weights
    from panet_jax.testing import torch_resnet_reference as ref

    width = 1 / 16
    net = ref.randomize_(ref.ResNet(50, width), seed=3).eval()
    path = tmp_path / "resnet50-random.pth"
    torch.save(net.state_dict(), path)
    c = h.tiny_config(model__encoder="resnet50", model__pretrained=str(path))
    c.model.width = width
    state = ts.create_train_state(c, jax.random.key(0))
    want = resnet_weights.load_torchvision_resnet(path, 50, width)
    got = {"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]}
    flat_want, flat_got = _leaves(want), _leaves(got)
    assert flat_want.keys() == flat_got.keys()
    assert all(np.array_equal(flat_want[k], flat_got[k]) for k in flat_want)


def test_a_resnet_run_is_reloaded_and_used_by_predict(tmp_path, data_dir):
    wd = tmp_path / "wd"
    h.run_train(wd, f"--config.data.data_dir={data_dir}", "--config.model.encoder=resnet50",
                "--config.train.steps=2")  # fmt: skip
    model, variables = loading.load_model(wd)
    assert model.encoder.depth == 50
    assert set(variables) == {"params", "batch_stats"}
    # Statistics come back from the checkpoint as they were created (random init: 0 / 1).
    stats = _leaves(variables["batch_stats"])
    assert all(np.all(v == 0) if k.endswith("['mean']") else np.all(v == 1)
               for k, v in stats.items())  # fmt: skip
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:36] = 1
    (out,) = predictor.predict(wd, image, mask, image)
    assert out.shape == (40, 48) and set(np.unique(out)) <= {0, 1}

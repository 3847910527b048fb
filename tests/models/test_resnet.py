"""Tests of panet_jax.models.resnet (ResNet-50/101 encoders) and models.resnet_weights."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances as tol
from flax import traverse_util

from panet_jax.models.resnet import ResNetEncoder, feature_channels, output_size
from panet_jax.models.weights import resnet as rw
from panet_jax.models.weights.vgg import PretrainedWeightsError

SMALL = 1 / 16  # width of the fast tests: stem 4, bottlenecks 4/8/16, 64 output channels
HW = (65, 49)  # odd, non-square
# torchvision's documented parameter counts (resnet50: 25,557,032; resnet101: 44,549,160)
# minus layer4 (14,964,736) and fc (2,049,000): conv kernels + BN scale/bias up to layer3.
TRUNK_PARAMS = {50: 8_543_296, 101: 27_535_424}
# float64 gate: the forward's own rounding is ~ layers_rel(100 layers, fan-in 2304, U64)
# ~ 5e-13, so 1e-10 cannot fail by rounding while any real difference shows at >= 1e-6.
EXACT64_RESNET = 1e-10


def images(n: int, hw: tuple[int, int] = HW, seed: int = 1) -> np.ndarray:
    """``[n, 3, H, W]`` float64 pseudo-images (ImageNet-normalised scale)."""
    return np.random.default_rng(seed).standard_normal((n, 3, *hw))


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def conv_path_stats(depth: int, width: float) -> tuple[int, int]:
    """(convs on the longest path, largest conv fan-in) of the encoder."""
    layout = rw.torchvision_layout(depth, width)
    fan_ins = [math.prod(shape[1:]) for kind, shape in layout.values() if kind == "conv"]
    n_blocks = sum(1 for name in layout if name.endswith(".conv1") and name != "conv1")
    return 1 + 3 * n_blocks, max(fan_ins)


def forward(enc: ResNetEncoder, variables, x, **kw):
    """Jitted ``enc.apply``: one compile is cheaper than eager op-by-op dispatch here."""
    return jax.jit(lambda v, x: enc.apply(v, x, **kw))(variables, x)


def torch_state(depth: int, width: float, seed: int = 0, dtype=None):
    """(reference net in eval mode, its torchvision-format state dict)."""
    pytest.importorskip("torch")
    from panet_jax.testing import torch_resnet_reference as ref

    net = ref.randomize_(ref.ResNet(depth, width), seed).eval()
    if dtype is not None:
        net = net.to(dtype)
    return net, net.state_dict()


def torch_forward(net, x: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)  # NHWC


# --------------------------------------------------------------------------------------------
# Architecture: layer shapes, key coverage, output sizes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [50, 101])
def test_init_matches_expected_shapes_and_torchvision_counts(depth):
    enc = ResNetEncoder(depth=depth, width=1.0)
    variables = jax.eval_shape(enc.init, jax.random.key(0), jnp.zeros((1, 33, 33, 3)))
    shapes = jax.tree.map(lambda v: tuple(v.shape), variables)
    assert shapes == rw.expected_variable_shapes(depth, 1.0)
    assert set(variables) == {"params", "batch_stats"}
    n_params = sum(math.prod(s.shape) for s in jax.tree.leaves(variables["params"]))
    assert n_params == TRUNK_PARAMS[depth]
    assert enc.out_channels == 1024 == feature_channels(1.0)
    assert ResNetEncoder(depth=depth, width=SMALL).out_channels == 64


@pytest.mark.torch
@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("width", [1.0, SMALL, 0.3])
def test_layout_is_torchvision_state_dict(depth, width):
    """Every torchvision key except fc, layer4 and num_batches_tracked is read, with its
    shape, in state-dict order (the reference is built on the meta device: shapes only)."""
    torch = pytest.importorskip("torch")
    from panet_jax.testing import torch_resnet_reference as ref

    with torch.device("meta"):
        sd = ref.ResNet(depth, width).state_dict()
    dropped = [k for k in sd if rw.DROPPED.fullmatch(k)]
    assert all(
        k.startswith(("fc.", "layer4.")) or k.endswith("num_batches_tracked") for k in dropped
    )
    used = {k: tuple(v.shape) for k, v in sd.items() if k not in dropped}
    assert list(used.items()) == list(rw.torchvision_keys(depth, width).items())
    enc = ResNetEncoder(depth=depth, width=width)
    variables = jax.eval_shape(enc.init, jax.random.key(0), jnp.zeros((1, 17, 17, 3)))
    assert jax.tree.map(lambda v: tuple(v.shape), variables) == rw.expected_variable_shapes(
        depth, width
    )
    assert enc.out_channels == used[f"layer3.{ref.BLOCKS[depth][2] - 1}.bn3.weight"][0]


@pytest.mark.parametrize("size", [417, 65, 49, 33, 8, 1])
def test_output_size(size):
    enc = ResNetEncoder(depth=50, width=SMALL)
    out = jax.eval_shape(
        lambda x: enc.init_with_output(jax.random.key(0), x)[0], jnp.zeros((1, size, size, 3))
    )
    assert out.shape == (1, output_size(size), output_size(size), 64)
    assert enc.output_size(size) == output_size(size)
    assert output_size(417) == 53


def test_rejects_bad_input_and_depth():
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        ResNetEncoder(width=SMALL).init(jax.random.key(0), jnp.zeros((1, 33, 33)))
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNetEncoder(depth=34, width=SMALL).init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)))


# --------------------------------------------------------------------------------------------
# Equality with the PyTorch forward
# --------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize(
    ("depth", "width", "hw", "batch"),
    [(50, SMALL, HW, 2), (101, SMALL, HW, 2), (50, 1.0, (41, 33), 1)],
)
def test_float64_equals_torch_double(depth, width, hw, batch):
    """Same formulation: the JAX float64 forward equals torch's double forward (random
    weights and non-trivial running statistics) to float64 rounding."""
    torch = pytest.importorskip("torch")
    net, sd = torch_state(depth, width, dtype=torch.float64)
    x = images(batch, hw)
    want = torch_forward(net, x)
    with jax.enable_x64(True):
        variables = rw.torchvision_state_to_variables(
            sd, depth=depth, width=width, dtype=np.float64
        )
        enc = ResNetEncoder(depth=depth, width=width, dtype=jnp.float64, param_dtype=jnp.float64)
        got = np.asarray(forward(enc, variables, jnp.asarray(nhwc(x))))
    assert got.dtype == np.float64
    assert (
        got.shape == want.shape == (batch, output_size(hw[0]), output_size(hw[1]), enc.out_channels)
    )
    assert np.max(want) > 0 and np.mean(want == 0) < 0.9  # a non-degenerate ReLU output
    assert tol.rel_err(got, want) < EXACT64_RESNET


@pytest.mark.torch
def test_float32_pth_file_matches_torch_double(tmp_path):
    """A float32 .pth read from disk gives the double forward of the same numbers within the
    JAX float32 forward's rounding: L stacked dot-product layers of fan-in <= n
    (tolerances.layers_rel, one implementation's rounding since the reference is exact)."""
    torch = pytest.importorskip("torch")
    depth = 50
    net, sd = torch_state(depth, SMALL, seed=3)
    path = tmp_path / "resnet50-small.pth"
    torch.save(sd, path)
    variables = rw.load_torchvision_resnet(path, depth, width=SMALL)
    assert all(v.dtype == np.float32 for v in jax.tree.leaves(variables))
    x = images(2).astype(np.float32)
    want = torch_forward(net.double(), x.astype(np.float64))  # float32 numbers, exact upcast
    got = forward(ResNetEncoder(depth=depth, width=SMALL), variables, jnp.asarray(nhwc(x)))
    assert got.dtype == jnp.float32
    n_layers, max_fan_in = conv_path_stats(depth, SMALL)
    assert tol.rel_err(got, want) < tol.layers_rel(n_layers, max_fan_in)


def test_compute_dtypes():
    """bfloat16 compute keeps float32 params and returns float32 features."""
    enc = ResNetEncoder(depth=50, width=SMALL, dtype=jnp.bfloat16)
    x = jnp.asarray(nhwc(images(1, (33, 33))), jnp.float32)
    created = jax.eval_shape(enc.init, jax.random.key(0), x)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(created))
    out = forward(enc, random_variables(50, SMALL), x)
    assert out.dtype == jnp.float32 and out.shape == (1, 5, 5, 64)
    assert bool(jnp.all(jnp.isfinite(out)))


# --------------------------------------------------------------------------------------------
# Frozen batch norm
# --------------------------------------------------------------------------------------------


def random_variables(depth: int, width: float, seed: int = 0, dtype=np.float32) -> rw.Variables:
    """Random encoder variables of the right shapes, with non-trivial BN statistics."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(rw.expected_variable_shapes(depth, width))
    out = {}
    for path, shape in flat.items():
        leaf = path[-1]
        if leaf == "kernel":
            v = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[:3]))
        elif leaf == "var":
            v = rng.uniform(0.5, 2.0, shape)
        elif leaf == "scale":
            v = rng.uniform(0.5, 1.5, shape)
        else:  # bias, mean
            v = 0.1 * rng.standard_normal(shape)
        out[path] = v.astype(dtype)
    return traverse_util.unflatten_dict(out)


def test_batch_norm_is_frozen():
    """Statistics are read, never written, and each image is normalised on its own: an image
    encoded alone equals it encoded beside very different images (float64, same formulation;
    batch statistics would change it at O(1))."""
    with jax.enable_x64(True):
        variables = random_variables(50, SMALL, dtype=np.float64)
        enc = ResNetEncoder(depth=50, width=SMALL, dtype=jnp.float64)
        x = nhwc(images(3, (33, 41)))
        x[1] = 5.0 * x[1] + 3.0
        x[2] = 0.0
        batch, state = forward(enc, variables, jnp.asarray(x), mutable=["batch_stats"])
        alone = forward(enc, variables, jnp.asarray(x[:1]))
    for a, b in zip(
        jax.tree.leaves(state["batch_stats"]),
        jax.tree.leaves(variables["batch_stats"]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert tol.rel_err(batch[:1], alone) < EXACT64_RESNET


# --------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------


@pytest.mark.torch
def test_state_dict_round_trip():
    """import -> export gives back every used entry bit for bit (float32)."""
    _, sd = torch_state(101, SMALL, seed=5)
    variables = rw.torchvision_state_to_variables(sd, depth=101, width=SMALL)
    back = rw.variables_to_torchvision_state(variables)
    assert list(back) == list(rw.torchvision_keys(101, SMALL))
    for key, value in back.items():
        np.testing.assert_array_equal(value, sd[key].numpy(), err_msg=key)
        assert value.dtype == np.float32


def test_npz_round_trip_is_bit_identical(tmp_path):
    variables = random_variables(50, SMALL, seed=2)
    path = tmp_path / "resnet50.npz"
    rw.save_npz(variables, path)
    loaded = rw.load_pretrained_resnet(path, 50, width=SMALL)
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    with pytest.raises(
        rw.PretrainedWeightsError, match=r"holds ResNet-50 variables, expected ResNet-101"
    ):
        rw.load_npz(path, 101, width=SMALL)
    with pytest.raises(rw.PretrainedWeightsError, match=r"width=1 expects \(7, 7, 3, 64\)"):
        rw.load_npz(path)


def test_merge_encoder_variables():
    """The encoder's variables land under 'encoder' in both collections of a model that holds
    a ResNetEncoder; the rest of the model is untouched."""

    class Wrapper(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = ResNetEncoder(depth=50, width=SMALL, name="encoder")(x)
            return nn.Dense(2, name="head")(y)

    x = jnp.zeros((1, 33, 33, 3))
    created = jax.eval_shape(Wrapper().init, jax.random.key(0), x)
    model_vars = jax.tree.map(lambda s: jnp.full(s.shape, 7.0, s.dtype), created)
    enc_vars = random_variables(50, SMALL, seed=4)
    merged = rw.merge_encoder_variables(model_vars, enc_vars)
    assert jax.tree.structure(merged) == jax.tree.structure(model_vars)
    for c in ("params", "batch_stats"):
        got, want = jax.tree.leaves(merged[c]["encoder"]), jax.tree.leaves(enc_vars[c])
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"], 7.0)
    with pytest.raises(PretrainedWeightsError, match="tree differs"):
        rw.merge_encoder_variables(model_vars, random_variables(101, SMALL))


def _vgg_state(torch):
    return {
        "features.0.weight": torch.zeros(64, 3, 3, 3),
        "features.0.bias": torch.zeros(64),
        "classifier.6.weight": torch.zeros(10, 4),
    }


@pytest.mark.torch
@pytest.mark.parametrize(
    ("case", "load_depth", "load_width", "expected"),
    [
        ("resnet50", 101, SMALL, ["ResNet-50", "(3, 4, 6, 3)", "depth=101", "(3, 4, 23, 3)"]),
        ("vgg", 50, SMALL, ["VGG", "not a torchvision ResNet", "ResNet-50"]),
        ("truncated", 50, SMALL, ["torch.load", "truncated"]),
        ("not_a_dict", 50, SMALL, ["expected a state dict", "Tensor"]),
        (
            "wider",
            50,
            SMALL,
            ["'conv1.weight'", "(8, 3, 7, 7)", "width=0.0625 expects (4, 3, 7, 7)"],
        ),
    ],
)
def test_weight_file_errors(tmp_path, case, load_depth, load_width, expected):
    """Each wrong file gives one line naming the file and what was expected."""
    torch = pytest.importorskip("torch")
    path = tmp_path / f"{case}.pth"
    if case == "resnet50":
        torch.save(torch_state(50, SMALL)[1], path)
    elif case == "vgg":
        torch.save(_vgg_state(torch), path)
    elif case == "truncated":
        torch.save(torch_state(50, SMALL)[1], path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "not_a_dict":
        torch.save(torch.zeros(3), path)
    else:
        torch.save(torch_state(50, 1 / 8)[1], path)
    with pytest.raises(rw.PretrainedWeightsError) as e:
        rw.load_pretrained_resnet(path, load_depth, width=load_width)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg
    for part in expected:
        assert part in msg, (part, msg)


@pytest.mark.torch
def test_full_width_state_dict_at_small_width_says_so():
    """Shapes are checked before any tensor is read (meta tensors: no memory)."""
    torch = pytest.importorskip("torch")
    from panet_jax.testing import torch_resnet_reference as ref

    with torch.device("meta"):
        sd = ref.ResNet(50, 1.0).state_dict()
    with pytest.raises(rw.PretrainedWeightsError, match=r"a full-width file: use width=1.0"):
        rw.torchvision_state_to_variables(sd, depth=50, width=SMALL, source="resnet50.pth")


def test_missing_file(tmp_path):
    path = tmp_path / "resnet101-5d3b4d8f.pth"
    with pytest.raises(FileNotFoundError, match="not found") as e:
        rw.load_pretrained_resnet(path, 101)
    assert isinstance(e.value, PretrainedWeightsError) and str(path) in str(e.value)
    with pytest.raises(PretrainedWeightsError, match=r"unknown weight file suffix '\.h5'"):
        rw.load_pretrained_resnet(tmp_path / "resnet50.h5", 50)

"""Tests of panet_jax.models.weights.vgg and experiments/convert_weights.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances as tol
from paths import REPO

from panet_jax.model import PANet
from panet_jax.models.vgg import VGG16Encoder
from panet_jax.models.weights import vgg as vgg_weights

CONVERT = os.path.join(REPO, "experiments", "convert_weights.py")
VGG16_PARAMS = 14_714_688  # torchvision vgg16().features


def random_params(width: float, seed: int = 0) -> vgg_weights.EncoderParams:
    rng = np.random.default_rng(seed)
    return {
        name: {
            "kernel": rng.standard_normal(k, dtype=np.float32),
            "bias": rng.standard_normal(b, dtype=np.float32),
        }
        for name, (k, b) in vgg_weights.vgg16_param_shapes(width).items()
    }


# --------------------------------------------------------------------------------------------
# Synthetic torchvision-format state dicts (the real key layout of torchvision's make_layers).
# --------------------------------------------------------------------------------------------

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
             "M")  # fmt: skip
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M")  # fmt: skip


def torchvision_state_dict(torch, cfg, batch_norm: bool = False) -> OrderedDict:
    """Zero tensors with torchvision ``vgg*`` state-dict keys/shapes (small fake classifier)."""
    sd: OrderedDict = OrderedDict()
    i, c_in = 0, 3
    for v in cfg:
        if v == "M":
            i += 1
            continue
        sd[f"features.{i}.weight"] = torch.zeros(v, c_in, 3, 3)
        sd[f"features.{i}.bias"] = torch.zeros(v)
        if batch_norm:
            for name in ("weight", "bias", "running_mean", "running_var"):
                sd[f"features.{i + 1}.{name}"] = torch.zeros(v)
            sd[f"features.{i + 1}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
            i += 3
        else:
            i += 2
        c_in = v
    add_fake_classifier(torch, sd)
    return sd


def add_fake_classifier(torch, sd: OrderedDict) -> None:
    """torchvision's classifier keys (Linear at 0, 3, 6), with shrunken shapes: they are
    ignored by the loader, and the real [4096, 25088] matrix is 400 MB."""
    for j, (o, i) in zip((0, 3, 6), ((16, 25088), (16, 16), (1000, 16)), strict=True):
        sd[f"classifier.{j}.weight"] = torch.zeros(o, i)
        sd[f"classifier.{j}.bias"] = torch.zeros(o)


@pytest.fixture(scope="module")
def vgg16_pth(tmp_path_factory):
    """A randomly initialised full-width official encoder, saved like vgg16-397923af.pth."""
    torch = pytest.importorskip("torch")
    from panet_jax.testing import torch_reference as tr

    torch.manual_seed(0)
    encoder = tr.Encoder(width=1.0).eval()
    with torch.no_grad():  # non-zero biases so that the bias mapping is tested too
        for m in tr.conv_modules(encoder):
            m.bias.uniform_(-0.1, 0.1)
    sd = OrderedDict((f"features.{k}", v) for k, v in encoder.features.state_dict().items())
    add_fake_classifier(torch, sd)
    path = tmp_path_factory.mktemp("weights") / "vgg16-397923af.pth"
    torch.save(sd, path)
    return path, encoder


# --------------------------------------------------------------------------------------------
# torchvision .pth
# --------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("hw", [(65, 65), (57, 70)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torchvision_pth_gives_same_features(vgg16_pth, hw, dtype):
    """The imported weights reproduce the official encoder: exactly in float64; in float32
    within the forward's rounding (13 convs of fan-in <= 9 x 512: tolerances.layers_rel),
    twice for the two implementations."""
    torch = pytest.importorskip("torch")
    path, encoder = vgg16_pth
    params = vgg_weights.load_pretrained(path)
    x = np.random.default_rng(1).standard_normal((1, 3, *hw), dtype=np.float32).astype(dtype)
    with torch.no_grad():
        net = encoder.double() if dtype == np.float64 else encoder.float()
        want = net(torch.from_numpy(x)).numpy()  # NCHW
    with jax.enable_x64(dtype == np.float64):
        jdtype = jnp.dtype(dtype)
        params = jax.tree.map(lambda p: jnp.asarray(p, jdtype), params)
        enc = VGG16Encoder(width=1.0, dtype=jdtype, param_dtype=jdtype)
        got = enc.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    got = np.asarray(got).transpose(0, 3, 1, 2)
    assert got.shape == want.shape and got.dtype == dtype
    assert np.min(want) < 0  # no ReLU after conv5_3
    bound = tol.EXACT64 if dtype == np.float64 else 2 * tol.layers_rel(13, 9 * 512)
    assert tol.rel_err(got, want) < bound


@pytest.mark.torch
def test_torchvision_mapping_by_index(vgg16_pth):
    path, encoder = vgg16_pth
    params = vgg_weights.load_torchvision_vgg16(path)
    sd = encoder.features.state_dict()
    assert list(params) == list(vgg_weights.CONV_NAMES)
    for name, idx in zip(vgg_weights.CONV_NAMES, vgg_weights.TORCHVISION_CONV_INDICES, strict=True):
        w = sd[f"{idx}.weight"].numpy()
        np.testing.assert_array_equal(params[name]["kernel"], w.transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(params[name]["bias"], sd[f"{idx}.bias"].numpy())
        assert params[name]["kernel"].dtype == np.float32
    assert vgg_weights.count_params(params) == VGG16_PARAMS


@pytest.mark.torch
def test_vgg19_state_dict_is_rejected(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "vgg19.pth"
    torch.save(torchvision_state_dict(torch, VGG19_CFG), path)
    with pytest.raises(vgg_weights.PretrainedWeightsError) as e:
        vgg_weights.load_pretrained(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "features.16.weight" in msg  # VGG-19's conv3_4 sits where VGG-16 has conv4_1
    assert "(512, 256, 3, 3)" in msg and "(256, 256, 3, 3)" in msg
    assert "VGG-19" in msg


@pytest.mark.torch
def test_vgg16_bn_state_dict_is_rejected(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "vgg16_bn.pth"
    torch.save(torchvision_state_dict(torch, VGG16_CFG, batch_norm=True), path)
    with pytest.raises(vgg_weights.PretrainedWeightsError, match="VGG-16-BN") as e:
        vgg_weights.load_pretrained(path)
    assert "features.1.running_mean" in str(e.value) and str(path) in str(e.value)


@pytest.mark.torch
def test_resnet_state_dict_is_rejected(tmp_path):
    torch = pytest.importorskip("torch")
    sd = OrderedDict([("conv1.weight", torch.zeros(64, 3, 7, 7))])
    for name in ("weight", "bias"):
        sd[f"bn1.{name}"] = torch.zeros(64)
    for j in range(12):
        sd[f"layer1.{j}.conv1.weight"] = torch.zeros(64, 64, 3, 3)
        sd[f"layer1.{j}.bn1.weight"] = torch.zeros(64)
    path = tmp_path / "resnet.pth"
    torch.save(sd, path)
    with pytest.raises(vgg_weights.PretrainedWeightsError) as e:
        vgg_weights.load_pretrained(path)
    msg = str(e.value)
    assert "'conv1.weight'" in msg and "(64, 3, 3, 3)" in msg and "(64, 3, 7, 7)" in msg
    assert "ResNet" in msg


@pytest.mark.torch
def test_not_a_state_dict_is_rejected(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(vgg_weights.PretrainedWeightsError, match="state dict"):
        vgg_weights.load_pretrained(path)


def test_missing_torch_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "vgg16-397923af.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ImportError) as e:
        vgg_weights.load_pretrained(path)
    assert "pip install torch==2.13.0" in str(e.value)
    assert "convert_weights.py" in str(e.value)


def test_state_dict_conversion_at_reduced_width():
    """The converter used by the model comparison tests validates against the scaled shapes."""
    width = 1 / 8
    params = random_params(width)
    sd = OrderedDict()
    for name, idx in zip(vgg_weights.CONV_NAMES, vgg_weights.TORCHVISION_CONV_INDICES, strict=True):
        sd[f"features.{idx}.weight"] = params[name]["kernel"].transpose(3, 2, 0, 1)
        sd[f"features.{idx}.bias"] = params[name]["bias"]
    back = vgg_weights.torchvision_state_to_params(sd, width=width)
    for name in vgg_weights.CONV_NAMES:
        np.testing.assert_array_equal(back[name]["kernel"], params[name]["kernel"])
    with pytest.raises(vgg_weights.PretrainedWeightsError, match=r"features\.0\.weight"):
        vgg_weights.torchvision_state_to_params(sd, width=1.0)


# --------------------------------------------------------------------------------------------
# Generic errors, .npz, merge
# --------------------------------------------------------------------------------------------


def test_unknown_suffix(tmp_path):
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown weight file suffix '\.ckpt'"):
        vgg_weights.load_pretrained(path)


@pytest.mark.parametrize("name", ["vgg16-397923af.pth", "vgg16.npz", "vgg16.h5"])
def test_missing_file(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=name):
        vgg_weights.load_pretrained(tmp_path / name)


def test_width_must_be_one(tmp_path):
    with pytest.raises(ValueError, match="full-width"):
        vgg_weights.load_pretrained(tmp_path / "vgg16.npz", width=0.5)


def test_npz_round_trip(tmp_path):
    params = random_params(1 / 8)
    path = tmp_path / "enc.npz"
    vgg_weights.save_npz(params, path)
    assert os.path.exists(path)  # no '.npz.npz'
    with np.load(path) as data:
        assert sorted(data.files) == sorted(
            f"{n}/{leaf}" for n in vgg_weights.CONV_NAMES for leaf in ("kernel", "bias")
        )
    back = vgg_weights.load_npz(path)
    for name in vgg_weights.CONV_NAMES:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(back[name][leaf], params[name][leaf])
    # A reduced-width file is not ImageNet VGG-16.
    with pytest.raises(vgg_weights.PretrainedWeightsError, match="conv1_1"):
        vgg_weights.load_pretrained(path)


def test_npz_full_width_via_load_pretrained(tmp_path):
    params = random_params(1.0)
    path = tmp_path / "vgg16.npz"
    vgg_weights.save_npz(params, path)
    back = vgg_weights.load_pretrained(path)
    np.testing.assert_array_equal(back["conv5_3"]["kernel"], params["conv5_3"]["kernel"])
    assert vgg_weights.count_params(back) == VGG16_PARAMS


def test_npz_with_missing_layer_is_rejected(tmp_path):
    flat = vgg_weights.flatten_params(random_params(1 / 8))
    del flat["conv4_2/bias"]
    path = tmp_path / "broken.npz"
    np.savez(path, **flat)
    with pytest.raises(vgg_weights.PretrainedWeightsError, match="conv4_2"):
        vgg_weights.load_npz(path)


def test_merge_encoder_params():
    model = PANet(VGG16Encoder(width=1 / 8))
    shapes = jax.eval_shape(lambda r: model.init_params(r, (17, 17)), jax.random.PRNGKey(0))
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    params = random_params(1 / 8, seed=3)
    merged = vgg_weights.merge_encoder_params(variables, params)
    for name in vgg_weights.CONV_NAMES:
        np.testing.assert_array_equal(merged["params"]["encoder"][name]["kernel"],
                                      params[name]["kernel"])  # fmt: skip
    # The input is not modified.
    assert not np.array_equal(variables["params"]["encoder"]["conv1_1"]["kernel"],
                              params["conv1_1"]["kernel"])  # fmt: skip
    with pytest.raises(vgg_weights.PretrainedWeightsError, match=r"conv1_1/(kernel|bias).*width"):
        vgg_weights.merge_encoder_params(variables, random_params(1.0))


# --------------------------------------------------------------------------------------------
# Keras .h5
# --------------------------------------------------------------------------------------------


def write_keras_h5(path, params: vgg_weights.EncoderParams, layout: str, extra=()) -> None:
    """Write ``params`` in the Keras 2 weight-file layout.

    ``layout='applications'``: the downloaded ``vgg16_weights_tf_dim_ordering_tf_kernels*.h5``
    (``block1_conv1/block1_conv1_W_1:0``); ``'keras2'``: ``model.save_weights`` of Keras 2.x
    (``block1_conv1/block1_conv1/kernel:0``). Pool layers have empty ``weight_names``.
    """
    h5py = pytest.importorskip("h5py")
    layer_names = []
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for block in range(1, 6):
            n_convs = 2 if block <= 2 else 3
            for i in range(1, n_convs + 1):
                layer = f"block{block}_conv{i}"
                name = f"conv{block}_{i}"
                g = f.create_group(layer)
                if layout == "applications":
                    wn = [f"{layer}_W_1:0", f"{layer}_b_1:0"]
                else:
                    wn = [f"{layer}/kernel:0", f"{layer}/bias:0"]
                g.attrs["weight_names"] = np.array([n.encode() for n in wn])
                g.create_dataset(wn[0], data=params[name]["kernel"])
                g.create_dataset(wn[1], data=params[name]["bias"])
                layer_names.append(layer)
            pool = f.create_group(f"block{block}_pool")
            pool.attrs["weight_names"] = np.array([], dtype="S1")
            layer_names.append(f"block{block}_pool")
        for layer in extra:
            g = f.create_group(layer)
            g.attrs["weight_names"] = np.array([f"{layer}_W_1:0".encode()])
            g.create_dataset(f"{layer}_W_1:0", data=np.zeros((3, 3, 512, 512), np.float32))
            layer_names.append(layer)
        f.attrs["layer_names"] = np.array([n.encode() for n in layer_names])


@pytest.fixture(scope="module")
def keras_params():
    return random_params(1.0, seed=7)


@pytest.mark.parametrize("layout", ["applications", "keras2"])
def test_keras_h5_layout_and_bgr_flip(tmp_path, keras_params, layout):
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_keras_h5(path, keras_params, layout)
    raw = vgg_weights.load_keras_vgg16_h5(path, rgb_normalised=False)
    for name in vgg_weights.CONV_NAMES:
        np.testing.assert_array_equal(raw[name]["kernel"], keras_params[name]["kernel"])
        np.testing.assert_array_equal(raw[name]["bias"], keras_params[name]["bias"])
    rgb = vgg_weights.load_pretrained(path)  # default: adapted to RGB ImageNet-normalised input
    for name in vgg_weights.CONV_NAMES[1:]:
        np.testing.assert_array_equal(rgb[name]["kernel"], keras_params[name]["kernel"])
    # By hand: RGB input channel c uses Keras' BGR channel 2 - c, scaled by 255 * std_c.
    k_bgr, b = keras_params["conv1_1"]["kernel"], keras_params["conv1_1"]["bias"]
    std = (0.229, 0.224, 0.225)
    for c_rgb, c_bgr in ((0, 2), (1, 1), (2, 0)):
        np.testing.assert_allclose(rgb["conv1_1"]["kernel"][:, :, c_rgb, :],
                                   k_bgr[:, :, c_bgr, :] * 255 * std[c_rgb], rtol=1e-6)  # fmt: skip
    # Bias: the difference between 255 * ImageNet mean and the Caffe means, folded in.
    d_rgb = 255 * np.array([0.485, 0.456, 0.406]) - np.array([123.68, 116.779, 103.939])
    want_b = b + np.einsum("hwco,c->o", k_bgr[:, :, ::-1, :].astype(np.float64), d_rgb)
    np.testing.assert_allclose(rgb["conv1_1"]["bias"], want_b, rtol=1e-5, atol=1e-5)


def test_keras_conv1_adaptation_is_exact_in_the_interior():
    """conv1_1 on Caffe-preprocessed BGR input with the raw weights == adapted weights on our
    RGB ImageNet-normalised input (away from the zero-padded border)."""
    rng = np.random.default_rng(0)
    k = rng.standard_normal((3, 3, 3, 8), dtype=np.float32) * 0.01
    b = rng.standard_normal(8, dtype=np.float32)
    pixels = rng.uniform(0, 255, (1, 12, 12, 3))  # RGB, 0-255
    caffe_bgr = pixels[..., ::-1] - np.array([103.939, 116.779, 123.68])
    ours = (pixels / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    k2, b2 = vgg_weights.keras_bgr_to_rgb_normalised(k, b)

    def conv(x, kernel, bias):
        y = jax.lax.conv_general_dilated(
            jnp.asarray(x, jnp.float32), jnp.asarray(kernel), (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip
        return np.asarray(y + bias)

    want, got = conv(caffe_bgr, k, b), conv(ours, k2, b2)
    assert tol.rel_err(got[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1]) < 1e-5
    assert tol.rel_err(got, want) < 1e-2  # the border differs by < 0.5 grey levels of padding


def test_keras_h5_errors(tmp_path, keras_params):
    bad = {k: dict(v) for k, v in keras_params.items()}
    bad["conv3_1"] = {"kernel": np.zeros((3, 3, 128, 128), np.float32),
                      "bias": np.zeros(128, np.float32)}  # fmt: skip
    path = tmp_path / "bad.h5"
    write_keras_h5(path, bad, "applications")
    with pytest.raises(
        vgg_weights.PretrainedWeightsError, match=r"block3_conv1.*\(3, 3, 128, 256\)"
    ):
        vgg_weights.load_pretrained(path)
    path19 = tmp_path / "vgg19.h5"
    write_keras_h5(path19, keras_params, "applications", extra=("block5_conv4",))
    with pytest.raises(vgg_weights.PretrainedWeightsError, match="VGG-19"):
        vgg_weights.load_pretrained(path19)
    empty = tmp_path / "empty.h5"
    import h5py

    h5py.File(empty, "w").close()
    with pytest.raises(vgg_weights.PretrainedWeightsError, match="block1_conv1"):
        vgg_weights.load_pretrained(empty)


# --------------------------------------------------------------------------------------------
# experiments/convert_weights.py
# --------------------------------------------------------------------------------------------


def run_convert(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, CONVERT, *args], capture_output=True, text=True, env=env, cwd=REPO,
        timeout=600,
    )  # fmt: skip


@pytest.mark.torch
def test_convert_weights_cli(vgg16_pth, tmp_path):
    path, _ = vgg16_pth
    out = tmp_path / "vgg16.npz"
    r = run_convert(f"--input={path}", f"--output={out}")
    assert r.returncode == 0, r.stderr
    assert "13 convs" in r.stdout and f"{VGG16_PARAMS:,} parameters" in r.stdout
    converted = vgg_weights.load_pretrained(out)
    direct = vgg_weights.load_pretrained(path)
    for name in vgg_weights.CONV_NAMES:
        np.testing.assert_array_equal(converted[name]["kernel"], direct[name]["kernel"])
        np.testing.assert_array_equal(converted[name]["bias"], direct[name]["bias"])
    assert sorted(os.listdir(tmp_path)) == ["vgg16.npz"]  # no temporary file left behind

    # Refuses to overwrite, leaving the file alone.
    before = out.stat().st_mtime_ns
    r = run_convert(f"--input={path}", f"--output={out}")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert out.stat().st_mtime_ns == before
    r = run_convert(f"--input={path}", f"--output={out}", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["vgg16.npz"]


def test_convert_weights_cli_bad_input(tmp_path):
    r = run_convert(f"--input={tmp_path / 'missing.pth'}", f"--output={tmp_path / 'o.npz'}")
    assert r.returncode == 1 and "not found" in r.stderr
    assert not os.path.exists(tmp_path / "o.npz")
    r = run_convert(f"--input={tmp_path / 'missing.pth'}", f"--output={tmp_path / 'o.bin'}")
    assert r.returncode == 2 and ".npz" in r.stderr


@pytest.mark.parametrize("kind", ["pth", "h5", "npz"])
def test_truncated_weight_files_are_named(tmp_path, kind):
    path = tmp_path / f"weights.{kind}"
    if kind == "npz":
        vgg_weights.save_npz(
            {n: {"kernel": np.zeros(k, np.float32), "bias": np.zeros(b, np.float32)}
             for n, (k, b) in vgg_weights.vgg16_param_shapes(1 / 16).items()}, path)  # fmt: skip
    elif kind == "h5":
        h5py = pytest.importorskip("h5py")
        with h5py.File(path, "w") as f:
            f.create_dataset("block1_conv1", data=np.zeros(5000))
    else:
        torch = pytest.importorskip("torch")
        torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(vgg_weights.PretrainedWeightsError, match=r"weights\." + kind):
        vgg_weights.load_any(path)

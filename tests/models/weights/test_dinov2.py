"""panet_jax.models.weights.dinov2: the official ``.pth``, Hugging Face ``model.safetensors`` and
converted ``.npz`` formats, written here from random state dicts (no download), and the
one-line errors for files that are not the model asked for.

The Hub-format file is checked against transformers itself: ``from_pretrained`` on it must
hold the same weights as the official state dict, so the key mapping is not only ours.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from panet_jax.models import dinov2, registry  # noqa: E402
from panet_jax.models.weights import dinov2 as w  # noqa: E402

pytestmark = pytest.mark.torch

NAME, WIDTH = "dinov2_vits14", 1 / 16  # 12 blocks of dim 24: the hub layout, small
SPEC = dinov2.scaled_spec(dinov2.SPECS[NAME], WIDTH)


def random_state(spec: dinov2.ViTSpec = SPEC, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {k: rng.standard_normal(s).astype(np.float32)
             for k, s in w.official_shapes(spec).items()}  # fmt: skip
    state["mask_token"] = np.zeros((1, spec.embed_dim), np.float32)
    return state


def save_pth(state, path) -> str:
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return os.fspath(path)


def assert_same_params(a, b) -> None:
    import jax

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def state():
    return random_state()


@pytest.fixture(scope="module")
def pth(state, tmp_path_factory):
    return save_pth(state, tmp_path_factory.mktemp("w") / "dinov2_vits14_pretrain.pth")


def test_official_pth(state, pth):
    name, width, variables = w.load_dinov2(pth)
    assert (name, width) == (NAME, WIDTH)
    params = variables["params"]
    c = SPEC.embed_dim
    np.testing.assert_array_equal(params["blocks_3"]["attn"]["qkv"]["kernel"],
                                  state["blocks.3.attn.qkv.weight"].T)  # fmt: skip
    np.testing.assert_array_equal(params["patch_embed"]["kernel"][2, 5, 1],
                                  state["patch_embed.proj.weight"][:, 1, 2, 5])  # fmt: skip
    assert params["pos_embed"].shape == (1, 37 * 37 + 1, c)
    assert set(params) == set(dinov2.param_groups(SPEC))
    assert_same_params(w.load_dinov2(pth, NAME, WIDTH)[2], variables)
    assert_same_params(registry.read_weight_file(pth), variables)  # recognised by its keys
    assert registry.identify(variables) == (NAME, WIDTH)


def test_hub_safetensors_equals_transformers_reading(state, pth, tmp_path):
    """A ``facebook/dinov2-*`` style file (transformers 4 key names): our reading equals the
    .pth's, and transformers' ``from_pretrained`` of the same file holds the same numbers."""
    from transformers import Dinov2Model

    from panet_jax.testing import torch_dinov2 as ref

    spec = dinov2.scaled_spec(dinov2.SPECS[NAME], WIDTH)
    ref.hf_config(spec).save_pretrained(tmp_path)
    safetensors_numpy.save_file(ref.official_to_hub_file(state), tmp_path / "model.safetensors")
    _, _, ours = w.load_dinov2(tmp_path / "model.safetensors", NAME)
    assert_same_params(ours, w.load_dinov2(pth)[2])
    hf = Dinov2Model.from_pretrained(tmp_path).state_dict()
    for key, value in ref.official_to_hf(state).items():
        np.testing.assert_array_equal(hf[key].numpy(), value, err_msg=key)


def test_transformers_saved_safetensors(state, pth, tmp_path):
    """What transformers' own ``save_pretrained`` writes (SwiGLU and registers included)."""
    import torch as t

    from panet_jax.testing import torch_dinov2 as ref

    for name in ("dinov2_vits14", "dinov2_vitg14_reg"):
        spec = dinov2.scaled_spec(dinov2.SPECS[name], 1 / 64 if "vitg" in name else WIDTH)
        st = random_state(spec, seed=1)
        ref.build_reference(spec, st, dtype=t.float32).save_pretrained(tmp_path / name)
        got_name, _, got = w.load_dinov2(tmp_path / name / "model.safetensors")
        assert got_name == name
        want = w.load_dinov2(save_pth(st, tmp_path / f"{name}.pth"))[2]
        assert_same_params(got, want)


def test_npz_round_trip_without_torch(state, pth, tmp_path, monkeypatch):
    _, _, variables = w.load_dinov2(pth)
    path = tmp_path / "dinov2_vits14.npz"
    w.save_npz(variables["params"], SPEC, path)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    assert_same_params(w.load_dinov2(path, NAME, WIDTH)[2], variables)
    assert_same_params(registry.read_weight_file(path), variables)


def _expect(path, match: str, name=NAME, width=WIDTH) -> None:
    with pytest.raises(w.DinoV2WeightsError, match=match) as e:
        w.load_dinov2(path, name, width)
    assert os.fspath(path) in str(e.value) and "\n" not in str(e.value)


def test_wrong_and_damaged_files(state, pth, tmp_path):
    data = open(pth, "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    _expect(tmp_path / "cut.pth", "torch.load could not read it")
    safetensors_numpy.save_file({"embeddings.cls_token": state["cls_token"]},
                                tmp_path / "s.safetensors")  # fmt: skip
    cut = (tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(cut[:-7])
    _expect(tmp_path / "cut.safetensors", "not a readable .safetensors")
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 not really")
    _expect(tmp_path / "cut.npz", "not a readable .npz")
    vgg = save_pth({"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)},
                   tmp_path / "vgg16.pth")  # fmt: skip
    _expect(vgg, r"not a DINOv2 state dict .*features\.0\.weight")
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(w.DinoV2WeightsError, match=r"unknown suffix '\.bin'"):
        w.load_dinov2(tmp_path / "w.bin")


def test_another_model_is_refused(state, pth, tmp_path):
    """ViT-S given as ViT-B, a register model as a plain one, a truncated block list, one bad
    shape: each named in one line with what was expected."""
    _expect(pth, r"holds dinov2_vits14 \(embed dim 24, 12 blocks, MLP, no registers\); "
                 r"expected dinov2_vitb14 \(embed dim 48", name="dinov2_vitb14")  # fmt: skip
    _expect(pth, r"holds dinov2_vits14 .*; expected dinov2_vits14 \(embed dim 384", width=1.0)
    reg = dict(state, register_tokens=np.zeros((1, 4, 24), np.float32))
    _expect(save_pth(reg, tmp_path / "reg.pth"), "holds dinov2_vits14_reg .* 4 registers")
    short = {k: v for k, v in state.items() if not k.startswith("blocks.11.")}
    _expect(save_pth(short, tmp_path / "short.pth"), r"holds an unknown DINOv2 .*11 blocks")
    bad = dict(state, **{"blocks.2.mlp.fc1.bias": np.zeros(5, np.float32)})
    _expect(save_pth(bad, tmp_path / "bad.pth"), r"blocks\.2\.mlp\.fc1\.bias has shape \(5,\)")
    half = {k: v for k, v in state.items() if k != "blocks.4.ls2.gamma"}
    _expect(save_pth(half, tmp_path / "half.pth"), r"missing \['blocks\.4\.ls2\.gamma'\]")

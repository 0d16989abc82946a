# Copyright (c) monai_ext contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Slide encoder: shapes, padding and permutation invariance, the sine-cosine position embedding against a NumPy
hand computation, and local weights (round trip, refusal of a pickle payload, of wrong keys and shapes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ext.networks.slide_encoder import SlideEncoder, load_state_dict_file, sincos_2d

ARCH = {"in_dim": 12, "dim": 16, "depth": 2, "n_heads": 4}


def _mark(path: str) -> None:
    """What a malicious payload would run: leave a file behind."""
    Path(path).write_text("executed")


class _Payload:
    """An object whose unpickling calls :func:`_mark`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return _mark, (str(self.marker),)


def _encoder(seed: int = 0, **overrides: int) -> SlideEncoder:
    torch.manual_seed(seed)
    return SlideEncoder(**{**ARCH, **overrides}).eval()


@pytest.mark.parametrize(("batch", "n"), [(1, 1), (3, 7)])
def test_shapes(batch: int, n: int) -> None:
    out = _encoder()(torch.randn(batch, n, ARCH["in_dim"]))
    assert out["embedding"].shape == (batch, ARCH["dim"])
    assert out["tokens"].shape == (batch, n, ARCH["dim"])
    assert out["mask"].shape == (batch, n) and bool(out["mask"].all())


def test_padding_does_not_change_the_slide() -> None:
    encoder = _encoder()
    x = torch.randn(2, 6, ARCH["in_dim"])
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    padded = encoder(x, mask)
    x_other = x.clone()
    x_other[1, 4:] = 1e3  # padding values must not matter
    torch.testing.assert_close(encoder(x_other, mask)["embedding"], padded["embedding"])
    alone = encoder(x[1:, :4])
    torch.testing.assert_close(padded["embedding"][1], alone["embedding"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded["tokens"][1, :4], alone["tokens"][0], atol=1e-5, rtol=1e-5)
    assert bool((padded["tokens"][1, 4:] == 0).all())


def test_permutation_invariance_without_coordinates_and_not_with() -> None:
    encoder = _encoder()
    x = torch.randn(1, 9, ARCH["in_dim"])
    coords = torch.randint(0, 4096, (1, 9, 2)).float()
    perm = torch.randperm(9)
    torch.testing.assert_close(encoder(x[:, perm])["embedding"], encoder(x)["embedding"], atol=1e-5, rtol=1e-5)
    # positions follow their patches: permuting both is still invariant, moving positions alone is not
    with_pos = encoder(x, coords=coords)["embedding"]
    torch.testing.assert_close(encoder(x[:, perm], coords=coords[:, perm])["embedding"], with_pos, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(encoder(x, coords=coords[:, perm])["embedding"], with_pos, atol=1e-4)


@pytest.mark.parametrize("dim", [4, 16])
def test_sincos_2d_matches_hand_computation(dim: int) -> None:
    grid = np.array([[0.0, 0.0], [3.0, 1.5], [17.25, 40.0]])
    n_freq = dim // 4
    omega = 10000.0 ** (-np.arange(n_freq) / n_freq)
    expected = np.concatenate(
        [
            np.sin(grid[:, :1] * omega),
            np.cos(grid[:, :1] * omega),
            np.sin(grid[:, 1:] * omega),
            np.cos(grid[:, 1:] * omega),
        ],
        axis=1,
    )
    got = sincos_2d(torch.tensor(grid), dim).double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_round_trip_and_checkpoint_key(tmp_path: Path) -> None:
    source = _encoder(seed=1)
    path = tmp_path / "slide_encoder.pt"
    torch.save(source.state_dict(), path)
    loaded = SlideEncoder.from_pretrained(path, **ARCH).eval()
    fresh = _encoder(seed=2)
    x = torch.randn(2, 5, ARCH["in_dim"])
    torch.testing.assert_close(loaded(x)["embedding"], source(x)["embedding"], atol=0.0, rtol=0.0)
    assert not torch.allclose(fresh(x)["embedding"], source(x)["embedding"])
    nested = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": source.state_dict()}, nested)
    from_key = SlideEncoder.from_pretrained(nested, key="state_dict", **ARCH).eval()
    torch.testing.assert_close(from_key(x)["embedding"], source(x)["embedding"], atol=0.0, rtol=0.0)
    with pytest.raises(ValueError, match="key="):
        SlideEncoder.from_pretrained(nested, **ARCH)
    with pytest.raises(ValueError, match="no entry 'model'"):
        SlideEncoder.from_pretrained(nested, key="model", **ARCH)


def test_refuses_a_pickle_payload(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"patch_embed.weight": _Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"evil\.pt"):
        load_state_dict_file(path)
    assert not marker.exists()
    whole_module = tmp_path / "module.pt"
    torch.save(_encoder(), whole_module)  # a pickled module, not a state dict
    with pytest.raises(ValueError, match=r"module\.pt"):
        SlideEncoder.from_pretrained(whole_module, **ARCH)


@pytest.mark.parametrize(
    ("saved", "message"),
    [({"depth": 1}, "missing keys"), ({"depth": 3}, "unexpected keys"), ({"in_dim": 10}, "shape mismatches")],
)
def test_refuses_wrong_keys(tmp_path: Path, saved: dict[str, int], message: str) -> None:
    path = tmp_path / "other_arch.pt"
    torch.save(_encoder(**saved).state_dict(), path)
    with pytest.raises(ValueError, match=message) as info:
        SlideEncoder.from_pretrained(path, **ARCH)
    assert "other_arch.pt" in str(info.value)


def test_ill_arg(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of n_heads"):
        SlideEncoder(in_dim=8, dim=10, n_heads=4)
    with pytest.raises(ValueError, match="positive"):
        SlideEncoder(in_dim=0)
    encoder = _encoder()
    with pytest.raises(ValueError, match=r"\[B, N, 12\]"):
        encoder(torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="no valid patch"):
        encoder(torch.randn(2, 3, 12), torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="coords"):
        encoder(torch.randn(1, 3, 12), coords=torch.zeros(1, 3, 3))
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        SlideEncoder.from_pretrained(tmp_path / "absent.pt", **ARCH)

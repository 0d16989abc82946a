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

"""TransMIL: a two-layer transformer over the patches of a bag with a convolutional position encoding (PPEG).

Shao et al., "TransMIL: Transformer based Correlated Multiple Instance Learning for Whole Slide Image
Classification", NeurIPS 2021, https://arxiv.org/abs/2106.00908. Attention over the whole bag uses the Nystrom
approximation of Xiong et al., "Nystromformer", AAAI 2021 (https://arxiv.org/abs/2102.03902), as in the paper,
written here in plain PyTorch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from monai_ext.networks.mil.pooling import check_common_args, prepare_bag, projection


def segment_means(t: Tensor, n_segments: int) -> Tensor:
    """Means of ``n_segments`` contiguous, nearly equal segments along the token axis.

    Args:
        t: ``[H, N, d]`` with ``N >= n_segments``.
        n_segments: number of segments ``m``.

    Returns:
        ``[H, m, d]``; segment ``j`` holds tokens ``i`` with ``floor(i * m / N) == j``.
    """
    n = t.shape[1]
    segment = torch.arange(n, device=t.device) * n_segments // n  # [N], non-decreasing in [0, m)
    sums = torch.zeros(t.shape[0], n_segments, t.shape[2], dtype=t.dtype, device=t.device).index_add(1, segment, t)
    counts = torch.bincount(segment, minlength=n_segments).to(t.dtype)
    return sums / counts.unsqueeze(-1)


def iterative_pinv(a: Tensor, iterations: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of ``a: [H, m, m]`` by the iteration of Razavi et al. 2014 (Nystromformer eq. 16).

    Converges for the row-stochastic softmax kernels used here; ``iterations = 6`` is the paper's setting.
    """
    scale = a.abs().sum(dim=-1).amax(dim=-1) * a.abs().sum(dim=-2).amax(dim=-1)  # [H]
    z = a.transpose(-1, -2) / scale[:, None, None]
    identity = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * identity - az @ (15 * identity - az @ (7 * identity - az)))
    return z


def nystrom_attention(q: Tensor, k: Tensor, v: Tensor, num_landmarks: int, pinv_iterations: int) -> Tensor:
    """Nystrom approximation of ``softmax(q k^T / sqrt(d)) v`` in ``O(N m)`` time and memory.

    ``softmax(q k~^T) pinv(softmax(q~ k~^T)) softmax(q~ k^T) v`` with landmarks ``q~, k~`` = segment means
    (Xiong et al. 2021, https://arxiv.org/abs/2102.03902, eq. 14).

    Args:
        q: queries ``[H, N, d]``.
        k: keys ``[H, N, d]``.
        v: values ``[H, N, d]``.
        num_landmarks: number of landmarks ``m <= N``.
        pinv_iterations: iterations of :func:`iterative_pinv`.

    Returns:
        ``[H, N, d]``.
    """
    q = q / math.sqrt(q.shape[-1])
    q_landmarks = segment_means(q, num_landmarks)  # [H, m, d]
    k_landmarks = segment_means(k, num_landmarks)  # [H, m, d]
    kernel_3_v = torch.softmax(q_landmarks @ k.transpose(-1, -2), dim=-1) @ v  # [H, m, d]
    middle = iterative_pinv(torch.softmax(q_landmarks @ k_landmarks.transpose(-1, -2), dim=-1), pinv_iterations)
    kernel_1 = torch.softmax(q @ k_landmarks.transpose(-1, -2), dim=-1)  # [H, N, m]
    return kernel_1 @ (middle @ kernel_3_v)


class NystromLayer(nn.Module):
    """TransMIL's transformer layer ``x + attention(LayerNorm(x))`` with the Nystromformer value convolution.

    The attention is exact while the bag has at most ``num_landmarks`` tokens (Nystrom would cost more and
    approximate), Nystrom beyond. As in the Nystromformer code used by TransMIL, a depthwise convolution of the
    values along the token axis (kernel ``residual_kernel``) is added to the attention output.

    Args:
        dim: token size.
        n_heads: attention heads (``dim`` must be divisible by it).
        num_landmarks: Nystrom landmarks ``m``.
        pinv_iterations: iterations of the pseudo-inverse.
        residual_kernel: odd kernel size of the value convolution.
        dropout: dropout probability on the layer output.
    """

    def __init__(
        self,
        *,
        dim: int,
        n_heads: int,
        num_landmarks: int,
        pinv_iterations: int,
        residual_kernel: int,
        dropout: float,
    ) -> None:
        super().__init__()
        if n_heads < 1 or dim % n_heads != 0:
            raise ValueError(f"the token size ({dim}) must be a positive multiple of n_heads ({n_heads})")
        if num_landmarks < 1 or pinv_iterations < 1:
            raise ValueError(
                f"num_landmarks and pinv_iterations must be positive, got {num_landmarks}, {pinv_iterations}"
            )
        if residual_kernel < 1 or residual_kernel % 2 == 0:
            raise ValueError(f"residual_kernel must be a positive odd number, got {residual_kernel}")
        self.dim = dim
        self.n_heads = n_heads
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.residual_kernel = residual_kernel
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.value_conv = nn.Conv2d(
            n_heads, n_heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0), groups=n_heads, bias=False
        )
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def _heads(self, t: Tensor) -> Tensor:
        """``[N, dim]`` -> ``[H, N, dim / H]``."""
        return t.reshape(t.shape[0], self.n_heads, -1).transpose(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Update all tokens ``x: [N, dim]`` -> ``[N, dim]``."""
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # [H, N, d] each
        if x.shape[0] <= self.num_landmarks:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = nystrom_attention(q, k, v, self.num_landmarks, self.pinv_iterations)
        out = out + self.value_conv(v.unsqueeze(0)).squeeze(0)  # [H, N, d]
        return x + self.to_out(out.transpose(0, 1).reshape(x.shape))

    def forward_first(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Update only token 0 (the class token) with exact attention: ``O(N)`` time and memory.

        Args:
            x: tokens ``[N, dim]``.

        Returns:
            the updated class token ``[dim]`` and its attention weights ``[H, N]``.
        """
        h = self.norm(x)
        q = self._heads(F.linear(h[:1], self.to_qkv.weight[: self.dim]))  # [H, 1, d]
        k, v = F.linear(h, self.to_qkv.weight[self.dim :]).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)  # [H, N, d]
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [H, 1, N]
        head_window = v[:, : self.residual_kernel // 2 + 1].unsqueeze(0)  # only these reach token 0
        out = weights @ v + self.value_conv(head_window).squeeze(0)[:, :1]  # [H, 1, d]
        return x[0] + self.to_out(out.transpose(0, 1).reshape(self.dim)), weights[:, 0]


class _DepthwiseConv2d(torch.autograd.Function):
    """Depthwise ``same`` 2D convolution whose weight gradient is itself computed as a depthwise convolution.

    oneDNN's depthwise weight-gradient kernel is pathologically slow on CPU with more than one thread (measured
    for a 7x7 kernel on 512 channels: 100 x 100 grid 6-8 s on 2 threads vs 0.3 s on 1; this backward: 0.13 s).
    ``dL/dw[c] = x_padded[c] (*) dL/dy[c]``, a correlation with the output gradient as the kernel, which the
    forward convolution computes fast; ``dL/dx`` is the transposed convolution.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        batch, channels, height, width = x.shape
        pad = weight.shape[-1] // 2
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv_transpose2d(grad, weight, padding=pad, groups=channels)
        if ctx.needs_input_grad[1]:
            padded = F.pad(x, (pad, pad, pad, pad)).reshape(1, batch * channels, height + 2 * pad, width + 2 * pad)
            grad_w = F.conv2d(padded, grad.reshape(batch * channels, 1, height, width), groups=batch * channels)
            grad_w = grad_w.reshape(batch, channels, 1, *weight.shape[-2:]).sum(dim=0)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b


@torch.jit.unused
def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Depthwise ``same`` convolution of ``x: [B, C, H, W]`` with an odd square ``weight: [C, 1, k, k]``.

    Same result as ``F.conv2d(x, weight, bias, padding=k // 2, groups=C)``, with a fast CPU backward
    (see :class:`_DepthwiseConv2d`); TorchScript uses ``F.conv2d``.
    """
    return _DepthwiseConv2d.apply(x, weight, bias)


class PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise 7x7 + 5x5 + 3x3 convolutions of the tokens laid on a square.

    Shao et al. 2021 (https://arxiv.org/abs/2106.00908), sec. 3.3. The ``N`` patch tokens fill a
    ``ceil(sqrt(N))`` square row by row, topped up by repeating the first tokens as in the paper; the copies are
    dropped after the convolution so every patch appears once in the attention that follows.

    Args:
        dim: token size.
    """

    def __init__(
        self,
        *,
        dim: int,
    ) -> None:
        super().__init__()
        self.proj7 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.proj5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """Encode ``tokens: [N, dim]`` -> ``[N, dim]``."""
        n, dim = tokens.shape
        side = math.ceil(math.sqrt(n))
        while side * side < n:
            side += 1
        fill = torch.arange(side * side - n, device=tokens.device) % n
        grid = torch.cat([tokens, tokens[fill]]).transpose(0, 1).reshape(1, dim, side, side)
        if torch.jit.is_scripting():
            grid = F.conv2d(grid, self._fused_kernel(), self._fused_bias(), padding=3, groups=dim)
        else:
            grid = depthwise_conv2d(grid, self._fused_kernel(), self._fused_bias())
        return grid.reshape(dim, side * side).transpose(0, 1)[:n]

    def _fused_kernel(self) -> Tensor:
        """``identity + w7 + w5 + w3`` as one 7x7 depthwise kernel ``[dim, 1, 7, 7]``: one convolution, same result."""
        kernel = self.proj7.weight + F.pad(self.proj5.weight, (1, 1, 1, 1)) + F.pad(self.proj3.weight, (2, 2, 2, 2))
        return kernel + F.pad(torch.ones_like(kernel[..., :1, :1]), (3, 3, 3, 3))

    def _fused_bias(self) -> Tensor:
        b7, b5, b3 = self.proj7.bias, self.proj5.bias, self.proj3.bias
        if b7 is None or b5 is None or b3 is None:
            raise RuntimeError("PPEG convolutions lost their bias; rebuild the module instead of editing it")
        return b7 + b5 + b3


class TransMIL(nn.Module):
    """TransMIL (Shao et al. 2021, https://arxiv.org/abs/2106.00908): class token + 2 transformer layers + PPEG.

    ``projection -> [cls, patches] -> layer 1 -> PPEG(patches) -> layer 2 -> LayerNorm(cls)``. Bags are processed
    one at a time on their real patches only, so padding cannot change the result.

    Memory and speed: layer 1 updates every token and uses Nystrom attention (``O(N m)``); only the class token of
    layer 2 is used downstream, so layer 2 computes that one row of attention exactly (``O(N)``) - the same
    result as full attention, and the ``attention`` map is the attention the model really used. The PPEG
    convolution has a custom backward (:func:`depthwise_conv2d`). Measured with ``scripts/bench_mil.py``
    (training mode, one bag, ``in_dim=1024``, defaults, 2 threads on a 2-core machine shared with other jobs):
    100k patches 5.4-5.9 GB peak RSS on top of the bag, 32 s when the machine was quiet and 45-63 s under load;
    10k patches 1.0-1.1 GB, 3 s quiet. For comparison (figures from the project's issue #3, 2 threads): exact
    attention (SDPA) 12 s / 1.1 GB at 10k already; the ``nystrom-attention`` package 57 s / 11.9 GB at 100k.
    Chunked exact attention was rejected: linear memory but ``O(N^2)`` time, about 100 x the 10k cost at 100k.

    Args:
        in_dim: patch feature size ``D``.
        hidden_dim: token size ``E`` (``out_dim``), divisible by ``n_heads``.
        n_heads: attention heads.
        num_landmarks: Nystrom landmarks (the paper uses ``hidden_dim // 2``).
        pinv_iterations: iterations of the Nystrom pseudo-inverse.
        residual_kernel: odd kernel size of the value convolution in the attention.
        dropout: dropout probability after the projection and on the attention outputs.

    Forward returns ``embedding [B, E]`` and ``attention [B, N]``: the class token's layer-2 attention to each
    patch, averaged over heads, with its attention to itself removed and the rest renormalised to sum to 1.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        hidden_dim: int = 512,
        n_heads: int = 8,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_common_args(in_dim, hidden_dim, dropout)
        self.in_dim = in_dim
        self.out_dim = hidden_dim
        self.encoder = projection(in_dim, hidden_dim, dropout)
        self.cls_token = nn.Parameter(torch.empty(1, hidden_dim))
        layer_args = {
            "dim": hidden_dim,
            "n_heads": n_heads,
            "num_landmarks": num_landmarks,
            "pinv_iterations": pinv_iterations,
            "residual_kernel": residual_kernel,
            "dropout": dropout,
        }
        self.layer1 = NystromLayer(**layer_args)
        self.ppeg = PPEG(dim=hidden_dim)
        self.layer2 = NystromLayer(**layer_args)
        self.norm = nn.LayerNorm(hidden_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Pool ``x: [B, N, D]`` (``mask: [B, N]``, True = real) into ``embedding [B, E]``."""
        x, mask = prepare_bag(x, mask, self.in_dim)
        embeddings: list[Tensor] = []
        attentions: list[Tensor] = []
        for b in range(x.shape[0]):
            bag = x[b] if bool(mask[b].all()) else x[b][mask[b]]  # [n, D], real patches only
            tokens = torch.cat([self.cls_token, self.encoder(bag)])  # [1 + n, E]
            tokens = self.layer1(tokens)
            tokens = torch.cat([tokens[:1], self.ppeg(tokens[1:])])
            cls, weights = self.layer2.forward_first(tokens)  # [E], [H, 1 + n]
            embeddings.append(self.norm(cls))
            patch_weights = weights[:, 1:].mean(dim=0)
            patch_weights = patch_weights / patch_weights.sum()
            row = torch.zeros(mask.shape[1], dtype=x.dtype, device=x.device)
            attentions.append(row.masked_scatter(mask[b], patch_weights))  # [N], 0 on padding
        return {"embedding": torch.stack(embeddings), "attention": torch.stack(attentions)}

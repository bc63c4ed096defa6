"""The project's own U-Net and the EDM-preconditioned denoiser built on it.

Written for this project from the published formulas (Karras et al. 2022, "Elucidating the design
space of diffusion-based generative models", section 5 / table 1); no code is taken from other
repositories.

Architecture (:class:`UNet`)
----------------------------
* ``conv_in`` (3x3, ``in_channels -> channels[0]``).
* Encoder: per level ``blocks_per_level`` residual blocks, then (except at the last level) a
  stride-2 3x3 convolution. Every block output and every downsampled map is kept as a U-Net skip.
* Middle: two residual blocks at the coarsest level (an attention block between them when
  ``attention=True``).
* Decoder: per level ``blocks_per_level + 1`` residual blocks, each taking the concatenation of
  the current map and one encoder skip; nearest-neighbour x2 upsampling + 3x3 conv between levels
  (computed as one convolution on the coarse grid, :func:`upsample_conv`: the same result at
  less than half the multiply-adds).
* Output: GroupNorm, SiLU, 3x3 conv to ``out_channels`` (initialised near zero, so an untrained
  denoiser starts as ``D = c_skip x``).

Residual block: ``GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> (1 + scale) * h + shift -> SiLU ->
dropout -> conv3x3``; the block output is ``(h + skip(x)) / sqrt(2)`` (``skip`` is identity or a
1x1 conv when the channel count changes). ``scale, shift`` come from a per-block linear map of
the noise embedding.

Noise embedding: ``channels[0] // 2`` sine and ``channels[0] // 2`` cosine features of
``c_noise = ln(sigma) / 4`` at geometrically spaced frequencies ``2 pi f``, ``f`` in
``[1/8, 32]`` (fixed, not learned), then ``Linear -> SiLU -> Linear`` to ``emb_dim``.

Input sizes: the spatial size must be a multiple of ``2 ** (levels - 1)`` (4 for the three-level
configurations; patches 16/32/56/64 and the 304 x 304 padded canvas of a 256 image all are). Other
sizes are accepted: the input is zero-padded at the bottom/right to the next multiple and the
output cropped back. That padding also zero-fills the coordinate channels, which slightly changes
the result near the bottom/right edge, so the priors always use multiples.

Parameter counts (checked in ``tests/test_priors.py``)::

    tiny  (channels 8-16,            1 block,  emb 32):      44,065 parameters
    cpu   (channels 32-64-128,       2 blocks, emb 128):  3,719,649 parameters
    gpu   (channels 64-128-256-256,  2 blocks, emb 256): 24,757,953 parameters (sizes % 8)

Cost of the ``cpu`` network: 77.8 GFLOP for 25 patches of 56 x 56 (one assembled evaluation of a
256 x 256 image); channels-last memory format is 10-30 % faster on CPU, where the GroupNorm +
FiLM + SiLU of every block runs as :func:`norm_act` (one multiply-add per sample and channel
after float32 sums; PyTorch's channels-last GroupNorm was a third of a bfloat16 evaluation).

Kept as one module: the network is one concept, the U-Net and the denoiser that wraps it, with
its blocks, the fused normalisation and its configurations, as the description above goes
through them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "EDMDenoiser", "CONFIGS", "build_unet", "count_parameters", "unet_config"]

_SQRT_HALF = 1.0 / math.sqrt(2.0)
#: values per chunk of :func:`norm_act`'s sums (512 KiB in float32: cache-sized), used up to
#: this many torch threads (``benchmarks/norm_act_threads.py`` measured both sides)
_CHUNK = 1 << 17
_CHUNK_MAX_THREADS = 1
#: the dtypes whose norm_act runs the fused numba kernel of :mod:`.norm_act_kernel` on the CPU
#: (tests and benchmarks change it to compare with the PyTorch path). float32 too since issue
#: 34: one evaluation 1.23x as fast on a 2-core AVX2 CPU (``benchmarks/results/
#: precision_nobf16.md``), whole DDS / PnP-ADMM runs of three test slices at the PSNR of
#: PyTorch's path (``benchmarks/results/speed_compare_fused.md``)
FUSED_DTYPES: tuple = (torch.bfloat16, torch.float32)
_FUSED = None  # the kernel once imported, False when numba did not import


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 32, at least 4 channels per group, dividing ``channels``."""
    g = min(32, max(1, channels // 4))
    while channels % g:
        g -= 1
    return g


class NoiseEmbedding(nn.Module):
    """Sine/cosine features of ``c_noise`` at fixed geometric frequencies, then an MLP."""

    def __init__(self, num_features: int, emb_dim: int, fmin: float = 0.125, fmax: float = 32.0):
        super().__init__()
        half = max(1, num_features // 2)
        freqs = 2.0 * math.pi * torch.exp(torch.linspace(math.log(fmin), math.log(fmax), half))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        arg = c_noise.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return self.mlp(torch.cat([torch.sin(arg), torch.cos(arg)], dim=1))


def _fused_kernel():
    """:func:`.norm_act_kernel.norm_act_cpu`, imported on first use (it imports numba); None
    when numba does not import here."""
    global _FUSED
    if _FUSED is None:
        try:
            from .norm_act_kernel import norm_act_cpu
        except Exception:  # no numba, or one that does not fit this numpy: the PyTorch path
            _FUSED = False
        else:
            _FUSED = norm_act_cpu
    return _FUSED or None


def norm_act(norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None = None,
             shift: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(norm(x) * (1 + scale) + shift)`` (``scale, shift`` (N, C, 1, 1) or None: plain
    ``silu(norm(x))``).

    On a channels-last ``x`` the group statistics come from per-channel sums of ``x`` and
    ``x^2`` over the ``(N, H W, C)`` view of its memory (accumulated in float32; float64 for
    float64), and the normalisation, the affine maps and the FiLM modulation fold into one
    per-(sample, channel) multiply-add: PyTorch's own channels-last GroupNorm on the CPU is 4-20
    times slower than that on the 28 x 28 and 14 x 14 levels, and in bfloat16 it was a third of
    the network's time. On the CPU outside autograd (bfloat16 and float32, where those passes
    over memory and PyTorch's bfloat16 SiLU dominate), one fused kernel does it all per sample
    (:mod:`.norm_act_kernel`, when numba imports). Other layouts use ``norm`` itself, as in training
    on a GPU."""
    n, c, h, w = x.shape
    if c == 1 or h * w == 1 or not x.is_contiguous(memory_format=torch.channels_last):
        out = norm(x)
        if scale is not None:
            out = torch.addcmul(shift, out, scale + 1.0)
        return F.silu(out)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, norm.weight, scale, shift))
    if x.dtype in FUSED_DTYPES and x.device.type == "cpu" and not grad:
        fused = _fused_kernel()
        if fused is not None:
            return fused(x, norm.weight, norm.bias, norm.num_groups, norm.eps, scale, shift)
    g = norm.num_groups
    v = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view of x's memory
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    # on one thread and outside autograd, the sums a few samples at a time (2^17 values) so that
    # each pass over a chunk finds it in the cache; on several threads each call on a chunk
    # pays the threads' synchronisation, and whole-batch calls are faster
    chunked = not grad and torch.get_num_threads() <= _CHUNK_MAX_THREADS
    k = max(1, _CHUNK // (h * w * c)) if chunked else n
    s1, s2 = [], []
    for i in range(0, n, k):
        if v.dtype == acc:
            s1.append(v[i:i + k].sum(1))
            s2.append((v[i:i + k] * v[i:i + k]).sum(1))
        else:  # one upcast copy: 2-4x faster than sum(dtype=) on each of x and x * x
            vf = v[i:i + k].to(acc)
            s1.append(vf.sum(1))
            s2.append(vf.square_().sum(1))
    mean_c, sq_c = torch.cat(s1) / (h * w), torch.cat(s2) / (h * w)  # (n, c)
    mean_g = mean_c.view(n, g, -1).mean(-1, keepdim=True)  # (n, g, 1)
    var_g = (sq_c.view(n, g, -1).mean(-1, keepdim=True) - mean_g * mean_g).clamp_min(0.0)
    rstd = (var_g + norm.eps).rsqrt()
    a = rstd.expand(n, g, c // g).reshape(n, c) * norm.weight.to(acc)
    b = norm.bias.to(acc) - mean_g.expand(n, g, c // g).reshape(n, c) * a
    if scale is not None:
        gain = scale.reshape(n, c).to(acc) + 1.0
        a, b = a * gain, b * gain + shift.reshape(n, c).to(acc)
    a, b = a.to(x.dtype)[:, :, None, None], b.to(x.dtype)[:, :, None, None]
    if grad:
        return F.silu(torch.addcmul(b, x, a))
    out = torch.empty_like(x)  # keeps x's channels-last layout
    return F.silu(torch.addcmul(b, x, a, out=out), inplace=True)


def _fold3(k: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two 2-tap kernels a 3-tap kernel (along ``dim``) becomes on a nearest-neighbour x2
    upsampled signal: output ``2 i`` sees inputs ``i - 1, i, i`` (taps ``k0, k1 + k2``), output
    ``2 i + 1`` sees ``i, i, i + 1`` (taps ``k0 + k1, k2``)."""
    k0, k1, k2 = k.unbind(dim)
    return torch.stack([k0, k1 + k2], dim), torch.stack([k0 + k1, k2], dim)


def upsample_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(upsample_nearest_x2(x))`` for a 3 x 3 ``conv`` with padding 1, computed on ``x``'s
    own grid: each of the four output phases ``(2 i + dy, 2 j + dx)`` is a 2 x 2 convolution of
    ``x`` (zero-padded by one) with the 3 x 3 kernel's taps summed where they fall on the same
    input pixel; one convolution computes all four (4 x the output channels) and the phases are
    interleaved. The same result (to rounding, padding included) at 16 instead of 36
    multiply-adds per input pixel and channel pair."""
    o = conv.out_channels
    rows = _fold3(conv.weight, 2)
    phases = [k for r in rows for k in _fold3(r, 3)]  # (dy, dx) = 00, 01, 10, 11
    y = F.conv2d(F.pad(x, (1, 1, 1, 1)), torch.cat(phases), conv.bias.repeat(4))
    n, _, h1, w1 = y.shape
    h, w = h1 - 1, w1 - 1
    out = torch.empty((n, o, 2 * h, 2 * w), dtype=y.dtype, device=y.device,
                      memory_format=_layout(x))
    # phase (dy, dx) at input pixel (i, j) is output channel block 2 dy + dx at (i + dy, j + dx)
    for dy in (0, 1):
        for dx in (0, 1):
            k = 2 * dy + dx
            out[:, :, dy::2, dx::2] = y[:, k * o:(k + 1) * o, dy:dy + h, dx:dx + w]
    return out


def _layout(x: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous() else torch.contiguous_format)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(norm_act(self.norm1, x))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = norm_act(self.norm2, h, scale, shift)
        h = self.conv2(self.dropout(h))
        return (h + self.skip(x)) * _SQRT_HALF


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels, residual with the 1/sqrt(2) scaling."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                             v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (self.proj(out) + x) * _SQRT_HALF


class UNet(nn.Module):
    """The noise-conditional U-Net ``F(x, c_noise)`` (see the module docstring).

    Parameters
    ----------
    in_channels : input channels (1 image + 2 coordinate channels by default).
    out_channels : output channels.
    channels : channels per level; the number of levels is ``len(channels)``.
    blocks_per_level : residual blocks per encoder level (decoder levels have one more).
    emb_dim : width of the noise embedding (default ``4 * channels[0]``).
    dropout : dropout probability inside the residual blocks.
    attention : add self-attention at the coarsest level.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, channels=(32, 64, 128),
                 blocks_per_level: int = 2, emb_dim: int | None = None, dropout: float = 0.05,
                 attention: bool = False):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1 or blocks_per_level < 1:
            raise ValueError("channels must be non-empty and positive, blocks_per_level >= 1")
        emb_dim = int(emb_dim or 4 * channels[0])
        self.config = dict(in_channels=int(in_channels), out_channels=int(out_channels),
                           channels=list(channels), blocks_per_level=int(blocks_per_level),
                           emb_dim=emb_dim, dropout=float(dropout), attention=bool(attention))
        self.levels = len(channels)
        self.multiple = 2 ** (self.levels - 1)

        self.embed = NoiseEmbedding(channels[0], emb_dim)
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)

        self.down = nn.ModuleList()
        skip_ch = [channels[0]]
        cur = channels[0]
        for i, ch in enumerate(channels):
            level = nn.ModuleList()
            for _ in range(blocks_per_level):
                level.append(ResBlock(cur, ch, emb_dim, dropout))
                cur = ch
                skip_ch.append(cur)
                if attention and i == self.levels - 1:
                    level.append(AttentionBlock(cur))
            if i < self.levels - 1:
                level.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skip_ch.append(cur)
            self.down.append(level)

        self.mid = nn.ModuleList([ResBlock(cur, cur, emb_dim, dropout)])
        if attention:
            self.mid.append(AttentionBlock(cur))
        self.mid.append(ResBlock(cur, cur, emb_dim, dropout))

        self.up = nn.ModuleList()
        for i in reversed(range(self.levels)):
            ch = channels[i]
            level = nn.ModuleList()
            for _ in range(blocks_per_level + 1):
                level.append(ResBlock(cur + skip_ch.pop(), ch, emb_dim, dropout))
                cur = ch
                if attention and i == self.levels - 1:
                    level.append(AttentionBlock(cur))
            if i > 0:
                level.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                           nn.Conv2d(cur, cur, 3, padding=1)))
            self.up.append(level)
        assert not skip_ch

        self.norm_out = nn.GroupNorm(_groups(cur), cur)
        self.conv_out = nn.Conv2d(cur, out_channels, 3, padding=1)
        with torch.no_grad():
            self.conv_out.weight.mul_(1e-3)
            self.conv_out.bias.zero_()

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        h0, w0 = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h0) % m, (-w0) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        emb = self.embed(c_noise.reshape(-1).expand(x.shape[0]) if c_noise.numel() == 1
                         else c_noise.reshape(-1))
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for layer in level:
                if isinstance(layer, ResBlock):
                    h = layer(h, emb)
                    skips.append(h)
                elif isinstance(layer, AttentionBlock):
                    h = layer(h)
                    skips[-1] = h
                else:  # downsampling conv
                    h = layer(h)
                    skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for level in self.up:
            for layer in level:
                if isinstance(layer, ResBlock):
                    h = layer(torch.cat([h, skips.pop()], dim=1), emb)
                elif isinstance(layer, AttentionBlock):
                    h = layer(h)
                elif type(layer[1]) is nn.Conv2d:  # nearest x2 upsampling + 3 x 3 conv,
                    h = upsample_conv(layer[1], h)  # as one conv on h's grid
                else:  # an adapted conv (LoRA, test-time adaptation): as written
                    h = layer(h)
        out = self.conv_out(norm_act(self.norm_out, h))
        if ph or pw:
            out = out[..., :h0, :w0]
        return out


class EDMDenoiser(nn.Module):
    """EDM-preconditioned denoiser ``D(x, sigma) = c_skip x + c_out F(c_in x, coords; c_noise)``.

    ``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``,
    ``c_in = 1 / sqrt(s^2 + sd^2)``, ``c_noise = ln(s) / 4`` with ``sd = sigma_data``.
    The coordinate channels are concatenated after the ``c_in`` scaling (they are not scaled).

    ``forward(x, sigma, coords)``: ``x`` (N, 1, h, w); ``sigma`` a float, a 0-d tensor or a
    tensor of N values; ``coords`` (N or 1, 2, h, w) (or None for a network with
    ``in_channels == 1``). Returns (N, 1, h, w).
    """

    def __init__(self, net: UNet, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    @property
    def coord_channels(self) -> int:
        return self.net.config["in_channels"] - self.net.config["out_channels"]

    def forward(self, x: torch.Tensor, sigma, coords: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.net.conv_in.weight.dtype
        x = x.to(dtype)
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(n)
        elif sigma.numel() != n:
            raise ValueError(f"sigma has {sigma.numel()} values for a batch of {n}")
        sigma = sigma.clamp_min(1e-8)
        s = sigma.reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (s * s + sd2)
        c_out = s * self.sigma_data / torch.sqrt(s * s + sd2)
        c_in = 1.0 / torch.sqrt(s * s + sd2)
        c_noise = torch.log(sigma) / 4.0
        inp = c_in * x
        if self.coord_channels:
            if coords is None:
                raise ValueError("this network needs coordinate channels")
            coords = coords.to(dtype=dtype, device=x.device)
            if coords.shape[0] != n:
                coords = coords.expand(n, -1, -1, -1)
            inp = torch.cat([inp, coords], dim=1)
        return c_skip * x + c_out * self.net(inp, c_noise)


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple
    blocks_per_level: int
    emb_dim: int
    dropout: float = 0.05
    attention: bool = False
    in_channels: int = 3
    out_channels: int = 1


#: Named architectures. ``cpu`` is the default for CPU training (about 4 M parameters).
CONFIGS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(channels=(8, 16), blocks_per_level=1, emb_dim=32),
    "cpu": UNetConfig(channels=(32, 64, 128), blocks_per_level=2, emb_dim=128),
    "gpu": UNetConfig(channels=(64, 128, 256, 256), blocks_per_level=2, emb_dim=256),
}


def unet_config(config) -> dict:
    """Architecture dict (the checkpoint's ``architecture`` entry) from a name, a
    :class:`UNetConfig` or a dict."""
    if isinstance(config, str):
        if config not in CONFIGS:
            from ..errors import InputError
            raise InputError(f"unknown network configuration {config!r}; "
                             f"choose one of: {', '.join(CONFIGS)}")
        config = CONFIGS[config]
    if isinstance(config, UNetConfig):
        config = asdict(config)
    cfg = dict(config)
    cfg["channels"] = [int(c) for c in cfg["channels"]]
    return cfg


def build_unet(config) -> UNet:
    """A :class:`UNet` from a configuration name or architecture dict."""
    cfg = unet_config(config)
    cfg.pop("name", None)
    return UNet(**cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""The prior interface the samplers use: ``prior.denoise(x, sigma) ~ E[x0 | x]``.

Every prior works on whole images ``(B, 1, H, W)`` on the normalised [0, 1] scale, of any size
(a prior trained on 256 x 256 images also denoises 512 x 512, 217 x 181 or 64 x 64 ones; the
coordinate channels follow :data:`~napari_patchdiff.priors.patches.COORDINATE_MAPPING`), and
counts its network evaluations in ``prior.nfe`` (one per :meth:`Prior.denoise` call, whatever
the batch or the number of patches). ``denoise`` does not switch off autograd: samplers that
need ``grad_x |y - A D(x)|`` call it with ``x.requires_grad_()``; others wrap it in
``torch.no_grad()``.

Precision: ``prior.precision`` is ``"float32"`` (a loaded prior's) or ``"bfloat16"``, where the
network's convolutions and matrix products run in bfloat16 (``torch.autocast``) while the EDM
skip connection, the patch assembly and the samplers stay in float32; :meth:`Prior.with_precision`
gives a copy that shares the network (``"auto"``, the default of every run: bfloat16 where the
device multiplies it natively, see :mod:`.precision`). On a 2-core CPU with AMX whole DDS and
PnP-ADMM runs were 2.4-3.2 times as fast as in float32, at the same PSNR within 0.02 dB
(``benchmarks/results/speed_compare_2threads.md``; the GroupNorm + SiLU then run as the fused
kernel of :mod:`.norm_act_kernel`); on CPUs without bfloat16 instructions it is 7.9 times as
slow (``benchmarks/results/precision_nobf16.md``), so "auto" runs float32 there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .checkpoint import check_compatible, checkpoint_paths, load_checkpoint
from .patches import assembled_denoise, averaged_denoise, canvas_coordinates, stitched_denoise
from .precision import CHOICES, choose_precision

__all__ = ["Prior", "PatchPrior", "WholeImagePrior", "load_prior", "shipped_priors",
           "SHIPPED_DIR", "MODES", "PRECISIONS"]

SHIPPED_DIR = Path(__file__).with_name("shipped")
MODES = ("assembled", "average", "stitch")
#: the network precisions a prior runs at
PRECISIONS = ("float32", "bfloat16")


class Prior:
    """Base class. Subclasses implement :meth:`_denoise`.

    Attributes
    ----------
    nfe : network evaluations so far (reset with :meth:`reset_nfe`).
    metadata : the checkpoint metadata (conventions, training record), ``{}`` if unknown.
    device : the device the network runs on.
    precision : "float32" or "bfloat16" (the network's convolutions; see the module docstring).
    """

    name = "prior"
    precision = "float32"
    precision_reason = "the prior's own"

    def __init__(self, metadata: dict[str, Any] | None = None, device="cpu"):
        self.nfe = 0
        self.metadata = dict(metadata or {})
        self.device = torch.device(device)
        self.last_check: dict[str, Any] = {}

    def denoise(self, x: torch.Tensor, sigma, generator: torch.Generator | None = None):
        """Denoised estimate of ``x`` (B, 1, H, W) at noise level ``sigma`` (float or (B,))."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise InputError(f"prior.denoise expects (B, 1, H, W), got {tuple(x.shape)}")
        self.nfe += 1
        if self.precision == "float32":
            return self._denoise(x, sigma, generator)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            out = self._denoise(x, sigma, generator)
        return out.to(torch.float32)

    __call__ = denoise

    def with_precision(self, precision: str | None) -> "Prior":
        """This prior (``precision`` None) or one that runs at ``precision``: "float32",
        "bfloat16" or "auto" (bfloat16 where this prior's device multiplies it natively, else
        float32; see :mod:`.precision`), a copy sharing the network when that differs from
        this prior's. ``precision_reason`` says why in words."""
        if precision is None:
            return self
        if precision not in CHOICES:
            raise InputError(f"unknown precision {precision!r}; choose one of "
                             f"{', '.join(CHOICES)}")
        chosen = choose_precision(precision, self.device)
        if chosen.name == self.precision and chosen.reason == self.precision_reason:
            return self
        import copy

        other = copy.copy(self)
        other.precision, other.precision_reason = chosen.name, chosen.reason
        return other

    @property
    def adapting(self) -> bool:
        """Whether this prior adapts to the measurement while it runs (an
        :class:`~napari_patchdiff.recon.adapt.AdaptingPrior`: it trains adapters through the run's
        steps, so it runs locally only, has ``focus``, ``last_loss``, ``summary`` and ``save``,
        and its report records the adaptation). The one question every caller asks."""
        return False

    def _denoise(self, x, sigma, generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def reset_nfe(self) -> None:
        self.nfe = 0

    def to(self, device) -> "Prior":
        self.device = torch.device(device)
        return self

    @property
    def trained_size(self) -> tuple[int, int] | None:
        """``(H0, W0)`` of the training images (the metadata's ``image_size``), or None when
        unknown: then every image gets the coordinates of its own canvas."""
        size = self.metadata.get("image_size")
        return None if not size else (int(size[0]), int(size[1]))

    def check(self, image_shape, modality: str | None = None) -> dict:
        """Raise InputError if images of ``image_shape``/``modality`` break this prior's
        conventions (modality, pad, patch size, coordinate convention; see
        :func:`~napari_patchdiff.priors.checkpoint.check_compatible`); any image size is fine.

        Returns how the prior will see such images (``{}`` without metadata): the training and
        the given image size, the coordinate map (``"canvas-linear-v1"`` at the training size,
        else ``"fov-relative-v1"``) and the per-axis pixel scale ``(H0 - 1) / (H - 1)``; the
        same dict is kept as ``self.last_check``."""
        info = {}
        if self.metadata:
            info = check_compatible(self.metadata, image_shape, modality,
                                    pad=getattr(self, "pad", None),
                                    patch_size=getattr(self, "patch_size", None))
        self.last_check = info
        return info


class _NetworkPrior(Prior):
    def __init__(self, denoiser: torch.nn.Module, metadata=None, device=None):
        dev = device if device is not None else next(denoiser.parameters()).device
        super().__init__(metadata, dev)
        self.denoiser = denoiser.eval().to(self.device)

    def to(self, device) -> "Prior":
        super().to(device)
        self.denoiser.to(self.device)
        return self

    def _prepare(self, x, sigma):
        x = x.to(self.device, torch.float32)
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.to(self.device, torch.float32)
        return x, sigma


class PatchPrior(_NetworkPrior):
    """PaDIS patch prior.

    ``mode='assembled'``: one random grid shift per call (the PaDIS denoiser);
    ``'average'``: fixed grid with overlap 8, averaged; ``'stitch'``: same grid, overwrite.
    ``generator`` passed to :meth:`denoise` draws the shift (default: torch's global RNG).
    """

    name = "patch"

    def __init__(self, denoiser, patch_size: int = 56, pad: int = 24, mode: str = "assembled",
                 max_batch: int | None = 64, overlap: int = 8, metadata=None, device=None):
        super().__init__(denoiser, metadata, device)
        if mode not in MODES:
            raise InputError(f"unknown patch prior mode {mode!r}; choose one of: {', '.join(MODES)}")
        if int(patch_size) < 1 or int(pad) < 0:
            raise InputError(f"invalid patch size {patch_size} / pad {pad}")
        self.patch_size = int(patch_size)
        self.pad = int(pad)
        self.mode = mode
        self.max_batch = max_batch
        self.overlap = int(overlap)

    def _denoise(self, x, sigma, generator):
        x, sigma = self._prepare(x, sigma)
        if self.mode == "assembled":
            return assembled_denoise(self.denoiser, x, sigma, self.patch_size, self.pad,
                                     generator=generator, max_batch=self.max_batch,
                                     trained_size=self.trained_size)
        fn = averaged_denoise if self.mode == "average" else stitched_denoise
        return fn(self.denoiser, x, sigma, self.patch_size, self.pad, overlap=self.overlap,
                  max_batch=self.max_batch, trained_size=self.trained_size)

    def __repr__(self):
        return (f"PatchPrior(patch_size={self.patch_size}, pad={self.pad}, mode={self.mode!r}, "
                f"device={self.device})")


class WholeImagePrior(_NetworkPrior):
    """The network applied to the whole zero-padded image at once, with the coordinate channels
    over the whole canvas (``pad`` from the metadata, default 0). Works with a whole-image
    checkpoint and, as an ablation, with a patch network (a patch as large as the canvas).
    ``max_batch`` images per network call (None: all).

    Images of another size than the training images get the coordinates of
    :data:`~napari_patchdiff.priors.patches.COORDINATE_MAPPING`; a canvas whose sides are not
    multiples of the network's downsampling factor is extended at the bottom/right with zeros
    (coordinates continued) and cropped back, rather than letting the network zero-fill the
    coordinate channels there."""

    name = "whole"

    def __init__(self, denoiser, pad: int | None = None, max_batch: int | None = None,
                 metadata=None, device=None):
        super().__init__(denoiser, metadata, device)
        self.pad = int(self.metadata.get("pad", 0) if pad is None else pad)
        self.max_batch = max_batch

    def _denoise(self, x, sigma, generator):
        x, sigma = self._prepare(x, sigma)
        b, _, h, w = x.shape
        p = self.pad
        m = int(getattr(getattr(self.denoiser, "net", None), "multiple", 1) or 1)
        hc, wc = h + 2 * p, w + 2 * p
        er, ec = (-hc) % m, (-wc) % m
        canvas = torch.nn.functional.pad(x, (p, p + ec, p, p + er))
        coords = canvas_coordinates(h, w, p, self.trained_size, device=x.device, dtype=x.dtype,
                                    rows=hc + er, cols=wc + ec)
        s = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1)
        s = s.expand(b) if s.numel() == 1 else s
        step = self.max_batch or b
        outs = [self.denoiser(canvas[i:i + step], s[i:i + step], coords)
                for i in range(0, b, step)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out[:, :, p:p + h, p:p + w]

    def __repr__(self):
        return f"WholeImagePrior(pad={self.pad}, device={self.device})"


def shipped_priors() -> dict[str, Path]:
    """Names -> weight files (``.safetensors`` only) of the priors shipped in
    ``napari_patchdiff/priors/shipped/``."""
    out = {}
    if SHIPPED_DIR.is_dir():
        for f in sorted(SHIPPED_DIR.iterdir()):
            if f.suffix == ".safetensors" and not f.name.endswith(".state.safetensors"):
                out[f.stem] = f
    return out


def load_prior(name_or_path, device="cpu", mode: str | None = None,
               patch_size: int | None = None, max_batch: int | None = 64,
               channels_last: bool | None = None) -> Prior:
    """A ready prior from a shipped name (see :func:`shipped_priors`) or a checkpoint path.

    ``kind == 'patch'`` checkpoints give a :class:`PatchPrior` (``mode`` default 'assembled',
    patch size from the metadata's ``inference_patch_size``, default 56, pad from the metadata);
    ``mode='whole'`` applies a patch network to whole images instead. ``kind == 'whole'`` gives a
    :class:`WholeImagePrior`. The network is frozen (``requires_grad=False``) and in eval mode;
    ``channels_last`` (default: on for CPU, faster there) sets its memory format.

    Weights load from ``.safetensors`` files; a ``.pt`` file only when ``name_or_path`` names
    it exactly (see :mod:`~napari_patchdiff.priors.checkpoint`), never in place of a missing
    ``.safetensors`` file.
    """
    from ..devices import parse_device

    device = parse_device(device)
    shipped = shipped_priors()
    key = str(name_or_path)
    if key in shipped:
        path = shipped[key]
    else:
        path = Path(key).expanduser()
        cands = checkpoint_paths(path)
        # a lone x.pt is not loaded for "x", but load_checkpoint says why (and how to convert)
        if not (path.exists() or cands["weights"].exists() or cands["pt"].exists()):
            choices = ", ".join(shipped) or "none are shipped"
            raise InputError(f"unknown prior {key!r}: no such checkpoint file, and not the name "
                             f"of a shipped prior ({choices})")
    denoiser, meta = load_checkpoint(path, device=device)
    denoiser.requires_grad_(False)
    if channels_last if channels_last is not None else torch.device(device).type == "cpu":
        denoiser.to(memory_format=torch.channels_last)
    meta = dict(meta, source=str(path))
    if meta["kind"] == "whole" or mode == "whole":
        if mode not in (None, "whole"):
            raise InputError(f"a whole-image prior has no patch mode {mode!r}")
        return WholeImagePrior(denoiser, pad=int(meta["pad"]), metadata=meta, device=device)
    p = int(patch_size or meta.get("inference_patch_size") or 56)
    prior = PatchPrior(denoiser, patch_size=p, pad=int(meta["pad"]), mode=mode or "assembled",
                       max_batch=max_batch, metadata=meta, device=device)
    if patch_size is not None:
        check_compatible(meta, meta["image_size"], None, patch_size=p)
    return prior

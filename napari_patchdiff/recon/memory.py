"""Up-front memory estimates for the options that scale a run's memory, checked before anything
big is allocated (the README: work over half of the computer's memory is refused with one line).

The image size and the depth go through :func:`napari_patchdiff.recon.problem.check_problem_memory`
when a problem is made. What a prior's network adds is estimated here from its convolutions'
shapes, found once per network by a forward pass on a tiny input (:func:`conv_profile`):

* test-time adaptation (:func:`adaptation_bytes`): the adapters' parameters with their gradients
  and Adam's two moments (four copies), the adapters' own activations (``rank`` channels at
  every adapted layer, kept for the backward pass) and the network's activations kept for the
  backward pass of one adaptation step (``adapt batch`` images, all their patches at once);
* a sampler run (:func:`run_bytes`; a reconstruction's window, an ensemble's batch): per worker
  on this machine (one locally, ``--workers`` of a Ray instance started here) the run's working
  arrays and one network call's activations (a chunk of ``max_batch`` patches, or all patches
  of the batch kept for the backward pass of the samplers that differentiate through the
  network);
* an ensemble (:func:`ensemble_bytes`): also the finished samples and their float64 summary.

The estimates are within a factor of about two of the measured peaks (``tests/test_adapt.py``
measures one; a 256 x 256 slice with the shipped CT prior, estimated against measured: adaptation
at rank 4 and 32, 1.12 and 1.41 GiB against 1.28 and 1.50; a DPS batch of 2, 2.17 against 2.01
GiB; a DDS batch of 2, 0.55 against 0.37 GiB); they exist to refuse settings that cannot fit (rank 100000 on a 256 x 256 slice wants
about 1 TiB; it ran for minutes until the kernel killed it), not to budget memory finely.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError

__all__ = ["ACTIVATION_FACTOR", "GRADIENT_METHODS", "ConvLayer", "adaptation_bytes",
           "check_adaptation_memory", "check_ensemble_memory", "check_run_memory",
           "conv_profile", "ensemble_bytes", "memory_limit", "network_pixels", "run_bytes"]

#: tensors of a convolution output's size that a network evaluation keeps per convolution
#: under autograd (the output, the normalised and the activated map, the skip sum); without
#: autograd every output once bounds the skip connections and temporaries alive at a time.
#: Measured against peak memory (module docstring)
ACTIVATION_FACTOR = 4
INFERENCE_FACTOR = 1
#: the samplers that differentiate through the network (their batch's activations all live at
#: once)
GRADIENT_METHODS = ("dps", "padis")
#: image-sized float32 arrays a sampler run keeps per batch item (iterates, CG vectors, the
#: denoised estimate, noise); float64 arrays per sample in an ensemble's summary
WORKING_ARRAYS = 16
SUMMARY_ARRAYS = 4


@dataclass(frozen=True)
class ConvLayer:
    """One convolution of a network: channels, kernel, the output pixels per input pixel of the
    network (1 at full resolution, 1/4 one level down) and whether adapters go on it."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    scale: float
    adapted: bool


def memory_limit() -> int:
    """Half of the physical memory: the most a run may need (:func:`files.check_memory`)."""
    from ..io.files import physical_memory

    return physical_memory() // 2


def conv_profile(net: nn.Module) -> list[ConvLayer]:
    """Every convolution ``net`` runs, found by one forward pass of a rank-1 adapted copy on a
    tiny zero input (no allocation that grows with a rank or an image); cached on ``net``."""
    cached = net.__dict__.get("_conv_profile")
    if cached is not None:
        return cached
    from ..priors.lora import LoRAConv2d, add_lora

    with torch.random.fork_rng(devices=[]):  # the adapters' initialisation draws from it
        probe = add_lora(net, 1).float().to("cpu")
    inner = {id(c) for m in probe.modules() if isinstance(m, LoRAConv2d)
             for c in (m.base, m.down, m.up)}
    m = 2 * int(getattr(net, "multiple", 1) or 1)
    config = getattr(net, "config", {})
    x = torch.zeros(1, int(config.get("in_channels", 1)), m, m)
    layers: list[ConvLayer] = []

    def record(module, inputs, output):
        conv = module.base if isinstance(module, LoRAConv2d) else module
        layers.append(ConvLayer(conv.in_channels, conv.out_channels, tuple(conv.kernel_size),
                                output.shape[-2] * output.shape[-1] / (m * m),
                                isinstance(module, LoRAConv2d)))

    hooks = [mod.register_forward_hook(record) for mod in probe.modules()
             if isinstance(mod, LoRAConv2d)
             or (isinstance(mod, nn.Conv2d) and id(mod) not in inner)]
    try:
        with torch.no_grad():
            probe(x.contiguous(memory_format=torch.channels_last), torch.zeros(1))
    finally:
        for h in hooks:
            h.remove()
    net.__dict__["_conv_profile"] = layers
    return layers


def _network(prior) -> nn.Module:
    denoiser = getattr(prior, "denoiser", None)
    net = getattr(denoiser, "net", None)
    if net is None:
        raise InputError("this prior has no network whose memory can be estimated")
    return net


def network_pixels(prior, image_shape) -> int:
    """Pixels the network sees for one image of ``image_shape`` in one denoiser call: all its
    patches (a patch prior) or its padded canvas (a whole-image prior)."""
    h, w = (int(s) for s in image_shape[-2:])
    pad = int(getattr(prior, "pad", 0) or 0)
    p = getattr(prior, "patch_size", None)
    if p is None:  # whole-image prior: the canvas, rounded up to the network's multiple
        m = int(getattr(_network(prior), "multiple", 1) or 1)
        return (-(-(h + 2 * pad) // m) * m) * (-(-(w + 2 * pad) // m) * m)
    p = int(p)
    if getattr(prior, "mode", "assembled") == "assembled":
        rows, cols = math.ceil((pad + h) / p), math.ceil((pad + w) / p)
    else:  # a fixed overlapping grid
        from ..priors.patches import overlapping_origins

        r, c = overlapping_origins(h, w, p, pad, int(getattr(prior, "overlap", 8)))
        rows, cols = len(r), len(c)
    return rows * cols * p * p


def _gib(nbytes: int) -> str:
    gib = nbytes / 2**30
    return f"{gib:.3g}" if gib < 1000 else f"{gib:,.0f}"


def _refuse(what: str, need: int, limit: int, advice: str) -> None:
    """The one-line InputError of a check below: ``what`` needs ``need`` bytes, over
    ``limit`` (half of the memory); ``advice`` says what to lower."""
    raise InputError(f"{what} needs about {_gib(need)} GiB but this computer has "
                     f"{_gib(2 * limit)} GiB of memory (refusing work over half of it): {advice}")


def _activation_per_pixel(layers: list[ConvLayer], itemsize: int, grad: bool = True) -> float:
    factor = ACTIVATION_FACTOR if grad else INFERENCE_FACTOR
    return factor * itemsize * sum(c.out_channels * c.scale for c in layers)


def adaptation_bytes(prior, rank: int, image_shape, images: int) -> tuple[int, int]:
    """``(fixed, per_rank)``: test-time adaptation of ``prior`` at ``rank`` on ``images``
    images of ``image_shape`` per step needs about ``fixed + rank * per_rank`` bytes (module
    docstring): parameters ``rank (in k k + out)`` per adapted convolution, four copies
    (weights, gradients, Adam's moments); the adapters' activations, ``rank`` channels per
    adapted convolution kept for the backward pass and as many gradients; the network's own
    activations under autograd."""
    layers = conv_profile(_network(prior))
    itemsize = 4  # adapters and the network's activations are float32
    pixels = images * network_pixels(prior, image_shape)
    params = sum(c.in_channels * c.kernel[0] * c.kernel[1] + c.out_channels
                 for c in layers if c.adapted)
    adapter_maps = sum(c.scale for c in layers if c.adapted)
    per_rank = 4 * itemsize * params + 2 * itemsize * pixels * adapter_maps
    fixed = pixels * _activation_per_pixel(layers, itemsize)
    return int(fixed), int(math.ceil(per_rank))


def check_adaptation_memory(prior, rank: int, image_shape, images: int) -> None:
    """InputError, before any adapter is made, when adapting at ``rank`` (``images`` images of
    ``image_shape`` per step) needs more than half of this computer's memory; the message names
    the rank and the largest one that fits."""
    fixed, per_rank = adaptation_bytes(prior, rank, image_shape, images)
    need, limit = fixed + rank * per_rank, memory_limit()
    if need <= limit:
        return
    fits = (limit - fixed) // per_rank
    h, w = image_shape[-2:]
    advice = (f"use adapt={{'rank': {fits}}} or less" if fits >= 1 else
              "lower adapt={'batch': ...} or crop the image")
    _refuse(f"test-time adaptation at rank {rank} ({images} image(s) of {h} x {w} per step)",
            need, limit, advice)


def run_bytes(prior, method: str, image_shape, items: int, workers: int = 1) -> int:
    """Bytes ``workers`` sampler runs on this machine need at once, each on ``items`` images of
    ``image_shape`` (a batch of samples times their slices, or a window of a volume): their
    working arrays and one network call's activations (module docstring)."""
    h, w = (int(s) for s in image_shape[-2:])
    working = items * h * w * 4 * WORKING_ARRAYS
    network = 0
    prior = getattr(prior, "base", prior)  # an adapting prior: its base's network
    if getattr(getattr(prior, "denoiser", None), "net", None) is not None:
        grad = method in GRADIENT_METHODS  # all the batch's patches at once, kept for backward
        per_pixel = _activation_per_pixel(conv_profile(_network(prior)), 4, grad)
        pixels = items * network_pixels(prior, (h, w))
        chunk = getattr(prior, "max_batch", None)
        if not grad and chunk:  # without autograd: max_batch patches (or images) per call
            p = getattr(prior, "patch_size", None)
            pixels = min(pixels, chunk * (p * p if p else network_pixels(prior, (h, w))))
        network = int(pixels * per_pixel)
    return workers * (working + network)


def ensemble_bytes(prior, method: str, image_shape, slices: int, samples: int, batch: int,
                   workers: int = 1) -> int:
    """Bytes an ensemble of ``samples`` samples (``slices`` slices of ``image_shape`` each),
    drawn ``batch`` at a time by ``workers`` workers on this machine, needs at once: the kept
    samples with their float64 summary and :func:`run_bytes` of the workers."""
    h, w = (int(s) for s in image_shape[-2:])
    kept = samples * slices * h * w * (4 + 8 * SUMMARY_ARRAYS)
    return kept + run_bytes(prior, method, image_shape, batch * slices, workers)


def check_run_memory(prior, method: str, image_shape, items: int, workers: int = 1) -> None:
    """InputError, before a reconstruction starts, when its runs on this machine (``workers``
    at once, ``items`` images each: the slices of a window, or of the whole problem) would need
    more than half of this computer's memory (the problem's own arrays are checked when it is
    made: :func:`napari_patchdiff.recon.problem.check_problem_memory`)."""
    need, limit = run_bytes(prior, method, image_shape, items, workers), memory_limit()
    if need <= limit:
        return
    h, w = image_shape[-2:]
    on = f" on {workers} workers of this machine" if workers > 1 else ""
    _refuse(f"reconstructing {items} slice(s) of {h} x {w} at a time with {method}{on}", need,
            limit, f"use a smaller batch={' or fewer workers=' if workers > 1 else ''}")


def check_ensemble_memory(prior, method: str, image_shape, slices: int, samples: int,
                          batch: int, workers: int = 1) -> None:
    """InputError, before sampling, when the ensemble would need more than half of this
    computer's memory; the message names the samples, the batch and the workers."""
    need, limit = ensemble_bytes(prior, method, image_shape, slices, samples, batch,
                                 workers), memory_limit()
    if need <= limit:
        return
    h, w = image_shape[-2:]
    on = f" on {workers} workers of this machine" if workers > 1 else ""
    _refuse(f"an ensemble of {samples} samples of {slices} x {h} x {w} drawn {batch} at a "
            f"time{on}", need, limit, "use fewer samples=, a smaller batch= or fewer workers=")

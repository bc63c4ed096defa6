"""Posterior ensembles from any sampler, antithetic pairs, uncertainty maps and calibration.

A diffusion reconstruction is one draw from a distribution. :func:`ensemble` draws ``N`` of them
from any registered diffusion sampler and streams each as it finishes; :func:`summarise` turns
the stack into a mean, a per-pixel standard deviation, per-pixel credible bounds, the per-pixel
within-pair correlation (antithetic design), a region statistic with a confidence interval that
is right for the design, and (with the truth) coverage and a calibration curve.

Noise designs (methods.md section 6):

* ``iid``: sample ``k`` draws its whole noise stream from ``NoiseSource(sample_seed(seed, k))``;
* ``antithetic``: pair ``j`` = samples ``2j`` and ``2j + 1`` draw from ``NoiseSource(s_j)`` and
  its negation ``NoiseSource(s_j, antithetic=True)``: initial noise and every injected noise are
  negated, by the noise source, so no sampler has special code. Both members of a pair run in
  the same batch and see the same patch shifts.

Samples are batched: one sampler run draws ``batch`` samples (times the slices of a volume) at
once through a :class:`~napari_patchdiff.noise_source.StackedNoise`. The same seed, design and
batch size give the same ensemble.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import metrics
from .errors import InputError
from .events import Cancelled, CancelToken, StepEvent
from .noise_source import NoiseSource, StackedNoise, sample_seed

__all__ = ["DESIGNS", "SampleEvent", "EnsembleResult", "ensemble", "run_ensemble", "summarise",
           "roi_mask", "parse_roi", "calibration_curve", "calibration_figure", "region_interval", "pair_correlation",
           "LEVELS"]

DESIGNS = ("iid", "antithetic")
#: nominal levels of the calibration curve
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: default number of image slices per sampler run (samples x slices)
BATCH_SLICES = 8


@dataclass(frozen=True)
class SampleEvent:
    """One finished posterior sample.

    ``index`` is 0-based out of ``total``; ``sample`` is (H, W) or (D, H, W) on the normalised
    scale; ``pair``/``member`` say which antithetic pair and which member (None for iid);
    ``nfe`` counts the network evaluations of the ensemble so far (one per batched call).
    """

    index: int
    total: int
    sample: np.ndarray
    seed: int
    antithetic: bool
    pair: int | None
    member: int | None
    nfe: int
    seconds: float

    @property
    def done(self) -> bool:
        return self.index + 1 >= self.total


def _streams(samples: int, design: str, seed: int) -> list[tuple[int, bool, int | None, int | None]]:
    """(seed, antithetic, pair, member) of each sample."""
    if design == "iid":
        return [(sample_seed(seed, k), False, None, None) for k in range(samples)]
    return [(sample_seed(seed, k // 2), bool(k % 2), k // 2, k % 2) for k in range(samples)]


def _check_design(samples: int, design: str) -> None:
    if design not in DESIGNS:
        raise InputError(f"unknown noise design {design!r}; choose one of: {', '.join(DESIGNS)}")
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise InputError(f"the number of samples must be a positive integer, got {samples!r}")
    if design == "antithetic" and samples % 2:
        raise InputError(f"the antithetic design draws pairs: the number of samples must be even, "
                         f"got {samples}")


def default_batch(samples: int, slices: int, design: str) -> int:
    """Samples per sampler run: about :data:`BATCH_SLICES` slices, whole pairs when antithetic."""
    b = max(1, min(samples, BATCH_SLICES // max(1, slices)))
    if design == "antithetic":
        b = max(2, b - b % 2)
    return b


def ensemble(problem, method: str, *, prior, samples: int = 8, design: str = "iid",
             batch: int | None = None, seed: int = 0, cancel: CancelToken | None = None,
             **params) -> Iterator[StepEvent | SampleEvent]:
    """Draw ``samples`` posterior samples of ``problem`` with the diffusion sampler ``method``.

    Yields the sampler's :class:`StepEvent` for every step of every batch (``info`` gains
    ``batch`` and ``samples``: which samples the batch draws) and one :class:`SampleEvent` per
    finished sample. ``params`` override the method's defaults (``seed`` is the ensemble's).
    The cancel token is checked at every step (a cancel raises
    :class:`~napari_patchdiff.events.Cancelled`).
    """
    from . import api
    from .solvers import get_solver

    _check_design(samples, design)
    spec = get_solver(method)
    if not spec.sampler:
        raise InputError(f"method {method!r} is not a posterior sampler; an ensemble needs one of "
                         f"{', '.join(_samplers())}")
    prior = api.resolve_prior(problem, method, prior)
    used = api.method_params(problem, method, **params)
    used.pop("seed", None)
    y = problem.y
    d = y.shape[0]  # slices of one sample
    batch = default_batch(samples, d, design) if batch is None else int(batch)
    if batch < 1 or (design == "antithetic" and batch % 2):
        raise InputError(f"batch must be a positive (even, for antithetic pairs) number of "
                         f"samples, got {batch}")
    streams = _streams(samples, design, seed)
    nfe0 = int(getattr(prior, "nfe", 0))
    t0 = time.perf_counter()
    for bi, start in enumerate(range(0, samples, batch)):
        chunk = streams[start:start + batch]
        noise = StackedNoise([NoiseSource(s, a, problem.op.device, problem.op.dtype)
                              for s, a, _, _ in chunk], [d] * len(chunk),
                             prior_seed=sample_seed(seed, 10**6 + bi), device=problem.op.device,
                             dtype=problem.op.dtype)
        yb = y.repeat(len(chunk), *([1] * (y.ndim - 1)))
        last = None
        for last in spec.run(problem.op, yb, prior=prior, noise=noise, cancel=cancel, **used):
            yield StepEvent(last.step, last.total, last.estimate, last.denoised,
                            nfe=int(getattr(prior, "nfe", 0)) - nfe0,
                            info={**last.info, "batch": bi,
                                  "samples": list(range(start, start + len(chunk)))})
        if last is None:
            raise RuntimeError(f"method {method!r} yielded no step")
        est = last.estimate.detach().to("cpu", torch.float32).numpy()[:, 0]
        for i, (s, a, pair, member) in enumerate(chunk):
            x = est[i * d:(i + 1) * d]
            yield SampleEvent(start + i, samples, x[0] if problem.squeeze else x, s, a, pair,
                              member, int(getattr(prior, "nfe", 0)) - nfe0,
                              time.perf_counter() - t0)


def _samplers() -> list[str]:
    from .solvers import SOLVERS

    return [n for n in SOLVERS.names() if SOLVERS.get(n).sampler]


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------


def pair_correlation(samples: np.ndarray) -> np.ndarray:
    """Per-pixel Pearson correlation between the first and second members over the pairs
    (samples ``2j`` and ``2j + 1``); 0 where a member does not vary. Needs >= 3 pairs (with two
    it is +-1 everywhere, whatever the sampler)."""
    a, b = samples[0::2].astype(np.float64), samples[1::2].astype(np.float64)
    if a.shape[0] < 3 or a.shape != b.shape:
        raise InputError("the within-pair correlation needs at least three complete pairs")
    a, b = a - a.mean(0), b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    num = (a * b).sum(0)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _t_quantile(p: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, dof))


def region_interval(values: np.ndarray, design: str, level: float = 0.9) -> dict[str, Any]:
    """Confidence interval of the posterior mean of a scalar statistic from its per-sample
    ``values``, right for the design.

    ``iid``: mean +- t_{n-1} sd / sqrt(n). ``antithetic``: the pair means ``g_j`` are iid, so
    mean +- t_{m-1} sd(g) / sqrt(m) over the ``m`` pairs. ``variance_reduction`` estimates how
    many times smaller the estimator's variance is than that of ``n`` iid samples
    (``var(f) / (2 var(g))`` = ``1 / (1 + rho)``), with ``rho`` the within-pair correlation.
    """
    f = np.asarray(values, dtype=np.float64)
    n = f.size
    q = 0.5 + level / 2
    out: dict[str, Any] = {"design": design, "level": level, "n": int(n),
                           "estimate": float(f.mean())}
    if design == "iid":
        if n < 2:
            raise InputError("a confidence interval needs at least two samples")
        se = f.std(ddof=1) / math.sqrt(n)
        dof = n - 1
    else:
        g = 0.5 * (f[0::2] + f[1::2])
        m = g.size
        if m < 2:
            raise InputError("an antithetic confidence interval needs at least two pairs")
        se = g.std(ddof=1) / math.sqrt(m)
        dof = m - 1
        var_f = f.var(ddof=1)
        out["pair_means"] = g.tolist()
        out["within_pair_correlation"] = (float(np.corrcoef(f[0::2], f[1::2])[0, 1])
                                          if f[0::2].std() > 0 and f[1::2].std() > 0 else 0.0)
        out["variance_reduction"] = (float(var_f / n / se**2) if se > 0 else math.inf)
    half = _t_quantile(q, dof) * se
    out.update(std_error=float(se), half_width=float(half), lower=float(f.mean() - half),
               upper=float(f.mean() + half), dof=int(dof))
    return out


def calibration_curve(samples: np.ndarray, truth: np.ndarray, levels=LEVELS) -> dict[str, float]:
    """Empirical coverage of the central per-pixel credible intervals at each nominal level:
    the fraction of pixels whose true value lies between the sample quantiles
    ``(1 - level) / 2`` and ``(1 + level) / 2``."""
    truth = np.asarray(truth, dtype=np.float64)
    out = {}
    for lev in levels:
        lo = np.quantile(samples, (1 - lev) / 2, axis=0)
        hi = np.quantile(samples, (1 + lev) / 2, axis=0)
        out[f"{lev:g}"] = float(((truth >= lo) & (truth <= hi)).mean())
    return out


def calibration_figure(curve: dict[str, float], path, title: str = "") -> None:
    """Save nominal against empirical coverage (the diagonal is perfect calibration) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nominal = [float(k) for k in curve]
    fig = Figure(figsize=(4, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="calibrated")
    ax.plot(nominal, list(curve.values()), "o-", label="measured")
    ax.set(xlabel="nominal coverage of central intervals", ylabel="empirical coverage",
           xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(str(path))


def _predictive_coverage(samples: np.ndarray, truth: np.ndarray, level: float) -> float:
    """Coverage of ``mean +- t_{n-1} sd sqrt(1 + 1/n)``: the interval that contains a new draw
    with probability ``level`` for Gaussian marginals whatever ``n`` (the quantile interval of a
    few samples is too narrow by construction)."""
    n = samples.shape[0]
    half = _t_quantile(0.5 + level / 2, n - 1) * samples.std(0, ddof=1) * math.sqrt(1 + 1 / n)
    return float((np.abs(truth - samples.mean(0)) <= half).mean())


def parse_roi(text: str, shape) -> np.ndarray:
    """A region from the command line: ``y0:y1,x0:x1`` (pixels, half-open; ``z0:z1,y0:y1,x0:x1``
    for a volume) or the path of a mask image (nonzero = inside)."""
    from pathlib import Path

    if Path(text).suffix.lower() in (".tif", ".tiff", ".npy"):
        from . import io

        mask, _ = io.read_image(text)
        return roi_mask(np.asarray(mask) != 0, shape)
    try:
        box = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--roi {text!r}: expected y0:y1,x0:x1 or a mask file") from None
    return roi_mask(box, shape)


def roi_mask(roi, shape) -> np.ndarray:
    """A boolean mask of ``shape`` from a mask array (2D masks apply to every slice of a volume)
    or a box ``[(y0, y1), (x0, x1)]`` (with a leading ``(z0, z1)`` for volumes)."""
    shape = tuple(shape)
    if isinstance(roi, np.ndarray):
        m = roi.astype(bool)
        if m.shape == shape[-2:] and len(shape) == 3:
            m = np.broadcast_to(m, shape)
        if m.shape != shape:
            raise InputError(f"the region mask has shape {m.shape}; the image has {shape}")
    else:
        box = [tuple(b) for b in roi]
        if len(box) not in (2, len(shape)) or any(len(b) != 2 for b in box):
            raise InputError(f"a region box needs one (start, stop) per axis of {shape}, got {roi}")
        m = np.zeros(shape, dtype=bool)
        index = tuple(slice(a, b) for a, b in box)
        m[(Ellipsis, *index) if len(box) == 2 else index] = True
    if not m.any():
        raise InputError(f"the region {roi if not isinstance(roi, np.ndarray) else 'mask'} is "
                         f"empty inside the image of shape {shape}")
    return np.ascontiguousarray(m)


@dataclass
class EnsembleResult:
    """An ensemble and its summaries (all on the normalised scale)."""

    samples: np.ndarray  # (N, H, W) or (N, D, H, W)
    mean: np.ndarray
    std: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    pair_correlation: np.ndarray | None
    report: dict[str, Any] = field(default_factory=dict)


def summarise(samples: np.ndarray, design: str = "iid", truth: np.ndarray | None = None,
              roi: np.ndarray | None = None, level: float = 0.9) -> EnsembleResult:
    """Mean, per-pixel std (ddof 1), central ``level`` credible bounds (sample quantiles),
    within-pair correlation (antithetic, >= 3 pairs), the region mean's confidence interval, and
    with ``truth``: PSNR/SSIM of the mean, ``coverage`` (fraction of pixels whose truth lies in
    the quantile interval), ``coverage_predictive`` (the same for the small-sample-exact interval
    ``mean +- t sd sqrt(1 + 1/n)``) and the calibration curve."""
    s = np.asarray(samples, dtype=np.float32)
    if s.shape[0] < 2:
        raise InputError("an ensemble summary needs at least two samples")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    s64 = s.astype(np.float64)
    mean, std = s64.mean(0), s64.std(0, ddof=1)
    lower = np.quantile(s64, (1 - level) / 2, axis=0)
    upper = np.quantile(s64, (1 + level) / 2, axis=0)
    n_pairs = s.shape[0] // 2
    rho = pair_correlation(s64) if design == "antithetic" and n_pairs >= 3 else None
    report: dict[str, Any] = {"design": design, "samples": int(s.shape[0]), "level": level,
                              "mean_std": float(std.mean())}
    if rho is not None:
        report["within_pair_correlation_mean"] = float(rho.mean())
    if roi is not None:
        m = roi_mask(roi, s.shape[1:])
        values = s64[:, m].mean(axis=1)
        report["roi"] = {"pixels": int(m.sum()), "values": values.tolist(),
                         **region_interval(values, design, level)}
    if truth is not None:
        t = np.asarray(truth, dtype=np.float64)
        if t.shape != s.shape[1:]:
            raise InputError(f"truth shape {t.shape} does not match the samples {s.shape[1:]}")
        try:
            report["ssim_mean"] = metrics.ssim(mean, t)
        except InputError:  # images smaller than the SSIM window
            report["ssim_mean"] = None
        report.update(psnr_mean=metrics.psnr(mean, t),
                      psnr_samples=[metrics.psnr(x, t) for x in s64],
                      coverage=float(((t >= lower) & (t <= upper)).mean()),
                      coverage_predictive=_predictive_coverage(s64, t, level),
                      calibration=calibration_curve(s64, t),
                      abs_error_mean=float(np.abs(mean - t).mean()))
        if roi is not None:
            truth_roi = float(t[roi_mask(roi, t.shape)].mean())
            report["roi"]["truth"] = truth_roi
    f32 = np.float32
    return EnsembleResult(s, mean.astype(f32), std.astype(f32), lower.astype(f32),
                          upper.astype(f32), None if rho is None else rho.astype(f32), report)


def run_ensemble(problem, method: str, *, prior, samples: int = 8, design: str = "iid",
                 batch: int | None = None, seed: int = 0, roi=None, level: float = 0.9,
                 cancel: CancelToken | None = None,
                 on_event: Callable[[Any], None] | None = None, **params) -> EnsembleResult:
    """Run :func:`ensemble` to the end and :func:`summarise` it (with the truth if known).

    On a cancel the exception carries ``exc.partial``: the summary of the samples finished so far
    (whole pairs for antithetic), or None if fewer than two.
    """
    if isinstance(samples, (int, np.integer)) and not isinstance(samples, bool) and samples < 2:
        raise InputError(f"an ensemble summary needs at least two samples, got {samples}")
    got: list[np.ndarray] = []
    t0 = time.perf_counter()
    nfe = 0
    truth = problem.truth.x if problem.truth is not None else None
    try:
        for ev in ensemble(problem, method, prior=prior, samples=samples, design=design,
                           batch=batch, seed=seed, cancel=cancel, **params):
            if isinstance(ev, SampleEvent):
                got.append(ev.sample)
                nfe = ev.nfe
            if on_event is not None:
                on_event(ev)
    except (Cancelled, KeyboardInterrupt) as exc:
        keep = len(got) - len(got) % 2 if design == "antithetic" else len(got)
        exc.partial = None
        if keep >= 2:
            exc.partial = summarise(np.stack(got[:keep]), design, truth, roi, level)
            exc.partial.report.update(cancelled=True, seconds=time.perf_counter() - t0)
        raise
    result = summarise(np.stack(got), design, truth, roi, level)
    batch = batch or default_batch(samples, problem.y.shape[0], design)
    result.report.update(method=method, seed=seed, batch=batch, nfe=nfe,
                         seconds=round(time.perf_counter() - t0, 3),
                         nfe_per_sample=nfe / math.ceil(samples / batch))
    return result

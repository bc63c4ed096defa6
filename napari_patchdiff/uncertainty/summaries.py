"""Summaries of a posterior ensemble: mean, std, credible bounds, within-pair correlation, a
region statistic's confidence interval right for the noise design, coverage and calibration."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..recon import metrics
from ..solvers.noise_source import GROUP
from .calibration import LEVELS, calibrated_bounds, calibration_curve, coverage
from .regions import region_note, roi_mask

__all__ = ["LEVELS", "EnsembleResult", "summarise", "check_level", "pair_correlation",
           "region_interval", "calibration_curve", "calibration_figure"]


def check_level(level) -> float:
    """A credible/confidence level, a number strictly between 0 and 1 (InputError otherwise)."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise InputError(f"the level must be a number in (0, 1), got {level!r}") from None
    if not 0 < value < 1:
        raise InputError(f"the level must be in (0, 1), e.g. 0.9 for 90%, got {level!r}")
    return value


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

    ``iid``: mean +- t_{n-1} sd / sqrt(n). ``antithetic`` and ``rqmc``: the means ``g_j`` of
    the pairs (of the groups of 4) are iid, so mean +- t_{m-1} sd(g) / sqrt(m) over the ``m``
    pairs or groups. ``variance_reduction`` estimates how many times smaller the estimator's
    variance is than that of ``n`` iid samples (``var(f) / n / se^2``; for pairs
    ``1 / (1 + rho)``, with ``rho`` the within-pair correlation).
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
        size = GROUP.get(design)
        if size is None:
            raise InputError(f"unknown noise design {design!r}")
        if n % size:
            raise InputError(f"the {design} design needs whole groups of {size} samples, got {n}")
        g = f.reshape(-1, size).mean(axis=1)
        m = g.size
        if m < 2:
            what = "pairs" if size == 2 else f"groups of {size}"
            raise InputError(f"an {design} confidence interval needs at least two {what}")
        se = g.std(ddof=1) / math.sqrt(m)
        dof = m - 1
        var_f = f.var(ddof=1)
        out["pair_means" if size == 2 else "group_means"] = g.tolist()
        if size == 2:
            out["within_pair_correlation"] = (float(np.corrcoef(f[0::2], f[1::2])[0, 1])
                                              if f[0::2].std() > 0 and f[1::2].std() > 0
                                              else 0.0)
        out["variance_reduction"] = (float(var_f / n / se**2) if se > 0 else math.inf)
    half = _t_quantile(q, dof) * se
    out.update(std_error=float(se), half_width=float(half), lower=float(f.mean() - half),
               upper=float(f.mean() + half), dof=int(dof))
    return out


def calibration_figure(curve: dict[str, float], path, title: str = "",
                       after: dict[str, float] | None = None) -> None:
    """Save nominal against empirical coverage (the diagonal is perfect calibration) as a PNG:
    ``curve`` for the sample-quantile intervals and, if given, ``after`` for the calibrated
    ones."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="calibrated")
    for label, c in (("sample quantiles", curve), ("calibrated intervals", after)):
        if c:
            ax.plot([float(k) for k in c], list(c.values()), "o-", label=label)
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
    #: the sample-quantile bounds; ``lower``/``upper`` are these unless a calibration applied
    lower_quantile: np.ndarray | None = None
    upper_quantile: np.ndarray | None = None

    @property
    def calibrated(self) -> bool:
        return self.report.get("interval", {}).get("kind") == "calibrated"


def summarise(samples: np.ndarray, design: str = "iid", truth: np.ndarray | None = None,
              roi: np.ndarray | None = None, level: float = 0.9, calibration=None,
              interval_note: str = "sample quantiles") -> EnsembleResult:
    """Mean, per-pixel std (ddof 1), central ``level`` bounds: the calibrated
    ``mean +- q std`` when ``calibration`` (a
    :class:`~napari_patchdiff.uncertainty.calibration.Calibration`) is given and covers at
    least as many samples, else the sample quantiles (kept as ``lower_quantile`` /
    ``upper_quantile`` either way; ``report["interval"]`` says which),
    within-pair correlation (antithetic, >= 3 pairs), the region mean's confidence interval, and
    with ``truth``: PSNR/SSIM of the mean, ``coverage`` (fraction of pixels whose truth lies in
    the reported interval), ``coverage_quantiles`` (in the quantile interval),
    ``calibration_calibrated`` (coverage of the calibrated intervals per level),
    ``coverage_predictive`` (the same for the small-sample-exact interval
    ``mean +- t sd sqrt(1 + 1/n)``) and the calibration curve."""
    s = np.asarray(samples, dtype=np.float32)
    if s.shape[0] < 2:
        raise InputError("an ensemble summary needs at least two samples")
    level = check_level(level)
    s64 = s.astype(np.float64)
    mean, std = s64.mean(0), s64.std(0, ddof=1)
    lower = np.quantile(s64, (1 - level) / 2, axis=0)
    upper = np.quantile(s64, (1 + level) / 2, axis=0)
    n_pairs = s.shape[0] // 2
    rho = pair_correlation(s64) if design == "antithetic" and n_pairs >= 3 else None
    report: dict[str, Any] = {"design": design, "samples": int(s.shape[0]), "level": level,
                              "mean_std": float(std.mean())}
    q_lower, q_upper = lower, upper
    if calibration is not None and s.shape[0] < calibration.samples:
        interval_note = (f"sample quantiles: {s.shape[0]} samples are fewer than the "
                         f"calibration's {calibration.samples}")
        calibration = None
    if calibration is not None:
        lower, upper = calibrated_bounds(mean, std, calibration, level)
        report["interval"] = {"kind": "calibrated", "factor": calibration.factor(level),
                              "floor": calibration.floor, "note": interval_note,
                              "calibration": calibration.describe()}
    else:
        report["interval"] = {"kind": "sample quantiles", "note": interval_note}
    if rho is not None:
        report["within_pair_correlation_mean"] = float(rho.mean())
    if roi is not None:
        m = roi_mask(roi, s.shape[1:])
        values = s64[:, m].mean(axis=1)
        report["roi"] = {"pixels": int(m.sum()), "values": values.tolist(),
                         "clipped": region_note(roi, s.shape[1:]),
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
                      coverage_quantiles=float(((t >= q_lower) & (t <= q_upper)).mean()),
                      coverage_predictive=_predictive_coverage(s64, t, level),
                      calibration=calibration_curve(s64, t),
                      abs_error_mean=float(np.abs(mean - t).mean()))
        if calibration is not None:
            report["calibration_calibrated"] = coverage(s64, t, calibration.factors,
                                                        calibration.floor)
        if roi is not None:
            truth_roi = float(t[roi_mask(roi, t.shape)].mean())
            report["roi"]["truth"] = truth_roi
    f32 = np.float32
    return EnsembleResult(s, mean.astype(f32), std.astype(f32), lower.astype(f32),
                          upper.astype(f32), None if rho is None else rho.astype(f32), report,
                          q_lower.astype(f32), q_upper.astype(f32))

"""Calibrated per-pixel intervals: split-conformal scaling of ``mean +- q std``.

The sample quantiles of a small diffusion ensemble are far too narrow (DDS's 90% intervals
cover about half of the truth pixels of real CT slices): the sampler is over-confident, and a
few samples cannot reach the tails anyway. Split-conformal calibration fixes the width from
held-out data: on calibration images with a known truth, the score of every pixel is

    r = |truth - mean| / max(std, floor)

and the interval at level ``a`` is ``mean +- q_a max(std, floor)`` with ``q_a`` the
``ceil((n + 1) a) / n`` empirical quantile of the ``n`` calibration scores. On images
exchangeable with the calibration images (same prior, operator, noise level, method settings and
ensemble size) the interval then contains the truth at a fraction ``a`` of pixels (marginal
coverage over pixels and images; Angelopoulos & Bates, "A gentle introduction to conformal
prediction", 2021; for images, Teneggi et al., ICML 2023). The interval keeps the sampler's
ranking of pixels (where ``std`` is large the interval is wide); only its scale is learned.

A :class:`Calibration` records what it was calibrated on; :meth:`Calibration.mismatch` says why
it does not apply to another run (a different prior, operator, noise level, method, evaluation
budget, or fewer samples). The calibrations shipped with the priors live in
``priors/shipped/calibration.json`` (made by ``benchmarks/uncertainty.py --calibrate``);
``napari-patchdiff calibrate`` makes one from a user's own held-out images.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["LEVELS", "calibration_curve", "CALIBRATION_LEVELS", "FLOOR", "Calibration", "scores", "conformal_factor",
           "fit_calibration", "calibrated_bounds", "shipped_calibrations", "find_calibration",
           "load_calibration", "coverage", "covered", "shaping_params", "prior_identity", "resolve_calibration",
           "sparsification"]

#: nominal levels of a calibration curve
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: levels a calibration stores a factor for
CALIBRATION_LEVELS = (0.5, 0.8, 0.9, 0.95)
#: smallest std used in a score (normalised scale): pixels where all samples agree (air) would
#: otherwise get an interval of width 0
FLOOR = 0.002
#: relative difference of noise levels within which a calibration still applies
NOISE_TOLERANCE = 0.25
#: operator description keys that do not change the problem
_IGNORED = ("backend",)
SHIPPED = Path(__file__).resolve().parents[1] / "priors" / "shipped" / "calibration.json"


def scores(samples: np.ndarray, truth: np.ndarray, floor: float = FLOOR) -> np.ndarray:
    """The conformity score ``|truth - mean| / max(std, floor)`` of every pixel (flattened)."""
    s = np.asarray(samples, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if s.ndim < 3 or s.shape[0] < 2 or s.shape[1:] != t.shape:
        raise InputError(f"calibration needs samples (N >= 2, ...) and a truth of the samples' "
                         f"image shape, got {s.shape} and {t.shape}")
    std = np.maximum(s.std(0, ddof=1), floor)
    return (np.abs(t - s.mean(0)) / std).ravel()


def conformal_factor(r: np.ndarray, level: float) -> float:
    """The split-conformal quantile of scores ``r`` for coverage ``level``."""
    r = np.sort(np.asarray(r, dtype=np.float64).ravel())
    n = r.size
    k = math.ceil((n + 1) * level)
    if n == 0 or k > n:
        raise InputError(f"{n} calibration scores are too few for level {level}")
    return float(r[k - 1])


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


def coverage(samples: np.ndarray, truth: np.ndarray, factors: dict,
             floor: float = FLOOR) -> dict[str, float]:
    """Fraction of pixels inside ``mean +- q max(std, floor)`` for each ``q`` of ``factors``
    (level -> factor); the scores are computed once."""
    return covered(scores(samples, truth, floor), factors)


def covered(r: np.ndarray, factors: dict) -> dict[str, float]:
    """Fraction of the scores ``r`` at most each factor of ``factors`` (level -> factor)."""
    return {k: float((r <= float(q)).mean()) for k, q in factors.items()}


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration and what it was fitted on.

    ``factors`` maps a level (``"0.9"``) to its conformal factor ``q``; ``prior``, ``operator``
    (the operator's description), ``noise_std``, ``method`` and ``method_params`` (the settings
    that shape the samples, e.g. ``nfe``), ``samples`` (ensemble size) and ``design`` say where
    it applies; ``images`` and ``pixels`` what it was fitted on; ``coverage_raw`` the coverage of
    the raw sample-quantile intervals on the calibration images; ``source`` the run that made it.
    """

    prior: str
    operator: dict
    noise_std: float
    method: str
    method_params: dict
    samples: int
    design: str
    factors: dict
    floor: float = FLOOR
    pixels: int = 0
    images: list = field(default_factory=list)
    coverage_raw: dict = field(default_factory=dict)
    coverage_calibrated: dict = field(default_factory=dict)  # on the calibration images
    source: str = ""
    prior_created: str = ""  # the checkpoint's creation stamp: a retrained prior of the same name
    # does not inherit the calibration

    def factor(self, level: float) -> float:
        key = f"{level:g}"
        if key not in self.factors:
            raise InputError(f"the calibration has factors for levels "
                             f"{', '.join(self.factors)}, not {level:g}")
        return float(self.factors[key])

    def mismatch(self, prior: str, operator: dict, noise_std: float, method: str,
                 method_params: dict, samples: int, level: float,
                 prior_created: str = "") -> str | None:
        """Why this calibration does not apply to such a run, or None if it does."""
        if prior != self.prior:
            return f"it was made for the prior {self.prior!r}, not {prior!r}"
        if self.prior_created and prior_created and prior_created != self.prior_created:
            return (f"it was made for the {self.prior!r} checkpoint of {self.prior_created}, "
                    f"not that of {prior_created}")
        mine = {k: v for k, v in self.operator.items() if k not in _IGNORED}
        theirs = {k: v for k, v in operator.items() if k not in _IGNORED}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            return (f"it was made for another operator ({', '.join(f'{k} {mine.get(k)}' for k in diff)}"
                    f", here {', '.join(f'{k} {theirs.get(k)}' for k in diff)})")
        a, b = float(self.noise_std), float(noise_std)
        if abs(a - b) > NOISE_TOLERANCE * max(a, b):
            return f"it was made at noise {a:g}, not {b:g}"
        if method != self.method:
            return f"it was made for {self.method}, not {method}"
        for k, v in self.method_params.items():
            if k in method_params and method_params[k] != v:
                return f"it was made with {k} = {v}, not {method_params[k]}"
        if samples < self.samples:
            return f"it was made with {self.samples} samples per ensemble, here only {samples}"
        if f"{level:g}" not in self.factors:
            return f"it has no factor for level {level:g}"
        return None

    def describe(self) -> str:
        return (f"{self.method} with the {self.prior!r} prior on {self.operator.get('operator')} "
                f"at noise {self.noise_std:g}, {self.samples} samples, from {len(self.images)} "
                f"images ({self.pixels} pixels)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        try:
            return cls(**d)
        except TypeError as exc:
            raise InputError(f"not a napari-patchdiff calibration: {exc}") from None


def fit_calibration(ensembles, truths, *, prior: str, operator: dict, noise_std: float,
                    method: str, method_params: dict, design: str, images: list,
                    levels=CALIBRATION_LEVELS, floor: float = FLOOR,
                    source: str = "", prior_created: str = "") -> Calibration:
    """Fit factors from ensembles ``(N, ...)`` and their truths (pooled over all pixels)."""
    ensembles, truths = list(ensembles), list(truths)
    if not ensembles or len(ensembles) != len(truths):
        raise InputError("calibration needs one truth per ensemble and at least one ensemble")
    n = {int(np.asarray(e).shape[0]) for e in ensembles}
    if len(n) != 1:
        raise InputError(f"every calibration ensemble must have the same size, got {sorted(n)}")
    r = np.concatenate([scores(e, t, floor) for e, t in zip(ensembles, truths)])
    raw = [calibration_curve(np.asarray(e, np.float64), t) for e, t in zip(ensembles, truths)]
    weights = [np.asarray(t).size for t in truths]
    coverage_raw = {k: float(np.average([c[k] for c in raw], weights=weights)) for k in raw[0]}
    factors = {f"{lev:g}": conformal_factor(r, lev) for lev in levels}
    return Calibration(prior=prior, operator=dict(operator), noise_std=float(noise_std),
                       method=method, method_params=dict(method_params), samples=n.pop(),
                       design=design,
                       factors=factors, floor=floor, pixels=int(r.size), images=list(images),
                       coverage_raw=coverage_raw,
                       coverage_calibrated=covered(r, factors),
                       source=source,
                       prior_created=str(prior_created or ""))


def calibrated_bounds(mean: np.ndarray, std: np.ndarray, calibration: Calibration,
                      level: float) -> tuple[np.ndarray, np.ndarray]:
    """``mean -+ q max(std, floor)`` (float32)."""
    half = calibration.factor(level) * np.maximum(np.asarray(std, np.float64), calibration.floor)
    m = np.asarray(mean, np.float64)
    return (m - half).astype(np.float32), (m + half).astype(np.float32)


def load_calibration(path) -> list[Calibration]:
    """The calibrations in a JSON file (one object or a list)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"calibration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the calibration file {path}: {exc}") from None
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(d, dict) for d in items):
        raise InputError(f"{path} holds no calibration")
    return [Calibration.from_dict(d) for d in items]


def shipped_calibrations() -> list[Calibration]:
    """The calibrations shipped with the priors (empty if none)."""
    return load_calibration(SHIPPED) if SHIPPED.exists() else []


def find_calibration(candidates, **run: Any) -> tuple[Calibration | None, list[str]]:
    """The first of ``candidates`` that applies to ``run`` (see :meth:`Calibration.mismatch`)
    and the reasons the others do not."""
    reasons = []
    for c in candidates:
        why = c.mismatch(**run)
        if why is None:
            return c, reasons
        reasons.append(why)
    return None, reasons


def prior_identity(prior) -> tuple[str, str]:
    """The name and creation stamp a calibration records of ``prior`` (a name, path or Prior);
    a prior adapted to one measurement is named apart from its base."""
    meta = getattr(prior, "metadata", None) or {}
    name = str(meta.get("name", prior))
    if getattr(prior, "adapting", False) or meta.get("adapted_from"):  # adapted to this measurement
        name += " (adapted)"
    return name, str(meta.get("created") or "")


def shaping_params(params: dict) -> dict:
    """The method parameters that shape an ensemble's samples (scalars, without the seed)."""
    return {k: v for k, v in params.items()
            if k != "seed" and isinstance(v, (int, float, str, bool)) and v is not None}


def resolve_calibration(calibration, *, problem, method: str, prior, params: dict,
                        samples: int, level: float) -> tuple[Calibration | None, str]:
    """The calibration an ensemble uses and a sentence saying which, or why none.

    ``calibration``: ``"auto"`` (the shipped calibrations), None or False (the raw sample
    quantiles), a path to a calibration JSON file, a :class:`Calibration` or a list of them.
    A calibration given explicitly that does not apply is an error; ``"auto"`` falls back to the
    raw quantiles and says why.
    """
    if calibration is None or calibration is False:
        return None, "sample quantiles (no calibration asked for)"
    explicit = calibration != "auto"
    if calibration == "auto":
        candidates = shipped_calibrations()
    elif isinstance(calibration, Calibration):
        candidates = [calibration]
    elif isinstance(calibration, (list, tuple)):
        candidates = list(calibration)
    elif isinstance(calibration, (str, Path)):
        candidates = load_calibration(calibration)
    else:
        raise InputError(f"calibration must be 'auto', None, a path or a Calibration, got "
                         f"{type(calibration).__name__}")
    name, created = prior_identity(prior)
    run = dict(prior=name, prior_created=created,
               operator=problem.op.describe(),
               noise_std=float(problem.noise_std or 0.0), method=method,
               method_params=shaping_params(params), samples=int(samples), level=float(level))
    found, reasons = find_calibration(candidates, **run)
    if found is not None:
        return found, f"calibrated: {found.describe()}"
    if explicit:
        raise InputError("the calibration does not apply to this run: " + "; ".join(reasons))
    why = (f" (the shipped ones do not apply: {'; '.join(reasons)})" if reasons
           else " (none is shipped for this prior, operator and method)")
    return None, "sample quantiles, not calibrated" + why


def sparsification(mean: np.ndarray, std: np.ndarray, truth: np.ndarray,
                   fractions=np.linspace(0.0, 0.95, 20)) -> dict[str, Any]:
    """Does ``std`` rank pixels by their actual error? Remove the fraction ``f`` of pixels with
    the largest ``std`` and take the RMSE of the rest (the std curve); do the same in the order
    of the true absolute error (the oracle curve, the best any ranking can do). The
    sparsification error ``ause`` is the mean gap between the two curves, both divided by the
    RMSE of all pixels: 0 is a perfect ranking; ``ause_random`` is the gap of a ranking that
    knows nothing (a flat curve at 1)."""
    m, s, t = (np.asarray(a, np.float64).ravel() for a in (mean, std, truth))
    err2 = (m - t) ** 2
    total = math.sqrt(err2.mean()) or 1.0
    n = err2.size

    def curve(order):
        e = err2[order]
        return [math.sqrt(e[int(round(f * n)):].mean()) / total for f in fractions]

    by_std = curve(np.argsort(-s, kind="stable"))
    oracle = curve(np.argsort(-err2, kind="stable"))
    return {"fractions": [float(f) for f in fractions], "std": by_std, "oracle": oracle,
            "ause": float(np.mean(np.subtract(by_std, oracle))),
            "ause_random": float(np.mean(np.subtract(1.0, oracle)))}

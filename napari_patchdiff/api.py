"""The Python API: simulate a measurement, run a method, draw an ensemble, train a prior.

The CLI and the napari widgets are thin layers over the same functions::

    from napari_patchdiff import api
    truth = api.load_truth("sample:ct", slice=10)
    problem = api.simulate(truth, "ct-parallel", noise_std=0.5, seed=0, views=20)
    result = api.solve(problem, "admm-tv")
    print(result.report["psnr"])
    ensemble = api.sample(problem, "dds", prior="ct", samples=8, design="antithetic")
    print(ensemble.report["coverage"])
"""
from __future__ import annotations

import time
from typing import Callable

from .events import Cancelled, CancelToken, StepEvent
from .problem import Problem, Truth, from_measurement, load_truth, simulate, truth_from_array
from .runs import (Result, iterate, make_report, method_params, needs_prior, resolve_prior,
                   result_of)

__all__ = ["Truth", "Problem", "Result", "load_truth", "truth_from_array", "simulate",
           "from_measurement", "method_params", "needs_prior", "resolve_prior", "iterate",
           "solve", "sample", "make_report"]


def solve(problem: Problem, method: str, cancel: CancelToken | None = None,
          on_event: Callable[[StepEvent], None] | None = None, prior=None, **params) -> Result:
    """Run ``method`` to the end and return the reconstruction with its report.

    If the run is cancelled (the token, or Ctrl-C), the exception carries the last completed
    step as ``exc.partial`` (a :class:`Result` whose report says ``"cancelled": True``).
    """
    used = method_params(problem, method, **params)
    prior = resolve_prior(problem, method, prior)
    t0, last = time.perf_counter(), None
    try:
        for last in iterate(problem, method, cancel=cancel, prior=prior, **used):
            if on_event is not None:
                on_event(last)
    except (Cancelled, KeyboardInterrupt) as exc:
        if last is not None:
            exc.partial = result_of(problem, method, used, last, time.perf_counter() - t0, prior)
            exc.partial.report["cancelled"] = True
        raise
    if last is None:
        raise RuntimeError(f"method {method!r} yielded no step")
    return result_of(problem, method, used, last, time.perf_counter() - t0, prior)


def sample(problem: Problem, method: str = "dds", prior=None, samples: int = 8,
           design: str = "iid", **kwargs):
    """A posterior ensemble of ``problem`` with its uncertainty maps and report; see
    :func:`napari_patchdiff.uncertainty.run_ensemble` (``batch``, ``seed``, ``roi``, ``level``,
    ``cancel``, ``on_event`` and the method's parameters)."""
    from .uncertainty import run_ensemble

    return run_ensemble(problem, method, prior=prior, samples=samples, design=design, **kwargs)

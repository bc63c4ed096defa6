"""The Python API: simulate a measurement, run a method, draw an ensemble, train a prior.

The CLI and the napari widgets are thin layers over the same functions::

    from napari_patchdiff import api
    truth = api.load_truth("sample:ct", slice=10)
    problem = api.simulate(truth, "ct-parallel", noise_std=0.5, seed=0, views=20)
    result = api.solve(problem, "admm-tv")
    print(result.report["psnr"])
    ensemble = api.sample(problem, "dds", prior="ct", samples=8, design="antithetic")
    print(ensemble.report["coverage"])
    meta = api.train(["scan1.nii.gz"], "priors/my_ct", bin=2, network="cpu", steps=20000)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .devices import parse_device
from .errors import InputError
from .events import CancelToken, Drive, StepEvent
from .recon.executors import RayExecutor
from .recon.problem import (Problem, Truth, from_measurement, load_measurement, load_truth,
                            simulate, truth_from_array)
from .recon.runs import (Result, iterate, make_report, method_params, needs_prior, resolve_prior,
                         result_of)

__all__ = ["Truth", "Problem", "Result", "load_truth", "truth_from_array", "simulate",
           "from_measurement", "load_measurement", "method_params", "needs_prior", "resolve_prior",
           "iterate",
           "solve", "sample", "calibrate", "train", "make_report", "RayExecutor"]


def solve(problem: Problem, method: str, cancel: CancelToken | None = None,
          on_event: Callable[[StepEvent], None] | None = None, prior=None, adapt=None,
          batch: int | None = None, overlap: int | None = None, cluster=None,
          precision: str | None = "auto", **params) -> Result:
    """Run ``method`` to the end and return the reconstruction with its report.

    ``adapt`` (True, or a dict of ``adapt_steps``, ``adapt_rank``, ``adapt_lr``, ...) adapts the
    prior to this measurement while it reconstructs (:mod:`napari_patchdiff.recon.adapt`); the
    adapted prior is ``result.prior`` (``result.prior.save(path)``). If the run is cancelled
    (the token, or Ctrl-C), the exception carries the last completed step as ``exc.partial``
    (a :class:`Result` whose report says ``"cancelled": True``; for a volume run window by
    window, ``report["finished_slices"]`` lists the slices done). ``batch``/``overlap``: a
    volume's window (see :func:`napari_patchdiff.recon.runs.iterate`). ``cluster``: "ray" or
    "ray:ADDRESS" (or a :class:`~napari_patchdiff.recon.executors.RayExecutor`) runs a volume's
    windows on Ray workers, with the same result (see :mod:`napari_patchdiff.recon.executors`).
    ``precision``: the prior network's: "auto" (bfloat16 where the device multiplies it
    natively, else float32; :mod:`napari_patchdiff.priors.precision`), "float32" or "bfloat16"
    (None: the prior's own); the report's ``precision`` and ``precision_reason`` say what ran.
    """
    from .recon.executors import resolve_executor

    _check_run(problem, cancel, on_event, "solve")
    executor = resolve_executor(cluster)
    used = method_params(problem, method, **params)
    prior = resolve_prior(problem, method, prior, adapt, precision)
    t0 = time.perf_counter()

    def partial(last) -> Result | None:  # the last completed step, as a cancelled result
        if last is None:
            return None
        out = result_of(problem, method, used, last, time.perf_counter() - t0, prior)
        out.report["cancelled"] = True
        return out

    with Drive(iterate(problem, method, cancel=cancel, prior=prior, batch=batch,
                       overlap=overlap, cluster=executor, precision=None, **used),
               partial, what=f"method {method!r}") as drive:
        last = drive.run(on_event)
    result = result_of(problem, method, used, last, time.perf_counter() - t0, prior)
    if executor.remote:
        result.report["executor"] = executor.describe()
    return result


def sample(problem: Problem, method: str = "dds", prior=None, samples: int = 8,
           design: str = "iid", **kwargs):
    """A posterior ensemble of ``problem`` with its uncertainty maps and report; see
    :func:`napari_patchdiff.uncertainty.run_ensemble` (``batch``, ``seed``, ``roi``, ``level``,
    ``cancel``, ``on_event``, ``cluster`` and the method's parameters). ``cluster="ray"`` (or
    ``"ray:ADDRESS"``, or ``RayExecutor(address, workers=N)``) spreads the batches over Ray
    workers and gives the same samples."""
    from .uncertainty import run_ensemble

    _check_run(problem, kwargs.get("cancel"), kwargs.get("on_event"), "sample")
    return run_ensemble(problem, method, prior=prior, samples=samples, design=design, **kwargs)


def _check_run(problem, cancel, on_event, what: str) -> None:
    """InputError unless ``problem`` is a Problem, ``cancel`` None or a CancelToken and
    ``on_event`` None or callable (else a bare AttributeError or TypeError mid-run)."""
    if not isinstance(problem, Problem):
        raise InputError(f"{what} needs a Problem (see simulate, load_measurement, "
                         f"from_measurement), got {type(problem).__name__}")
    if cancel is not None and not callable(getattr(cancel, "check", None)):
        raise InputError(f"cancel must be a CancelToken or None, got {type(cancel).__name__} "
                         f"{cancel!r}"[:120])
    if on_event is not None and not callable(on_event):
        raise InputError(f"on_event must be a function of one event or None, got "
                         f"{type(on_event).__name__} {on_event!r}"[:120])


def calibrate(truth: Truth, operator: str, *, prior, method: str = "dds", samples: int = 8,
              design: str = "iid", noise_std: float = 0.0, slices=None, seed: int = 0,
              device="cpu", on_event: Callable | None = None, source: str = "",
              operator_params: dict | None = None, **params):
    """Calibrate the per-pixel intervals of ``method``'s ensembles on held-out images.

    ``truth`` is a volume (or one image) the prior never saw; each of ``slices`` (default: all)
    gets a simulated measurement (``operator`` with ``operator_params``, ``noise_std``, seed
    ``seed + slice``) and an ensemble of ``samples`` draws (``params``: the method's parameters,
    as for :func:`sample`); the split-conformal factors come from all their pixels together
    (see :mod:`napari_patchdiff.uncertainty.calibration`). Returns the
    :class:`~napari_patchdiff.uncertainty.calibration.Calibration`; save it with
    ``json.dumps(cal.to_dict())`` and pass the file as ``calibration=`` to :func:`sample` (or
    ``--calibration`` on the command line).
    """
    from .priors import load_prior
    from .uncertainty import run_ensemble
    from .uncertainty.calibration import fit_calibration, prior_identity, shaping_params

    if not isinstance(truth, Truth):
        raise InputError(f"calibrate needs a Truth (see load_truth, truth_from_array), got "
                         f"{type(truth).__name__}")
    if on_event is not None and not callable(on_event):
        raise InputError(f"on_event must be a function of one event or None, got "
                         f"{type(on_event).__name__}")
    device = parse_device(device)
    x = np.asarray(truth.x)
    stack = x[None] if x.ndim == 2 else x
    chosen = list(range(stack.shape[0])) if slices is None else _calibration_slices(slices)
    bad = [i for i in chosen if not 0 <= i < stack.shape[0]]
    if bad:
        raise InputError(f"slices {bad} are not in the volume's {stack.shape[0]} slices")
    prior = load_prior(prior, device=device) if isinstance(prior, (str, Path)) else prior
    ensembles, truths, first = [], [], None
    for i in chosen:
        one = Truth(x=stack[i], modality=truth.modality, scale=truth.scale, meta=truth.meta)
        problem = simulate(one, operator, noise_std=noise_std, seed=seed + i, device=device,
                           **(operator_params or {}))
        res = run_ensemble(problem, method, prior=prior, samples=samples, design=design,
                           seed=seed + i, calibration=None, on_event=on_event,
                           precision="float32", **params)
        ensembles.append(res.samples)
        truths.append(stack[i])
        first = first or problem
    name, created = prior_identity(prior)
    return fit_calibration(
        ensembles, truths, prior=name, operator=first.op.describe(),
        noise_std=noise_std, method=method,
        method_params=shaping_params(method_params(first, method, **params)), design=design,
        images=[f"{truth.meta.get('source', 'truth')} slice {i}" for i in chosen],
        source=source, prior_created=created)


def _calibration_slices(slices) -> list[int]:
    """``calibrate``'s ``slices`` as a list of whole numbers, each named once: a slice named
    twice would count twice in the calibration ("from 3 images" of one)."""
    if isinstance(slices, (str, bytes)) or not hasattr(slices, "__iter__"):
        raise InputError(f"slices must be a list of slice numbers, got {slices!r}")
    chosen = list(slices)
    if not chosen:
        raise InputError("slices must name at least one slice (or None: every slice)")
    wrong = [i for i in chosen if isinstance(i, (bool, np.bool_))
             or not isinstance(i, (int, np.integer))]
    if wrong:
        raise InputError(f"slices must be whole numbers, got {wrong[0]!r}")
    chosen = [int(i) for i in chosen]
    repeated = sorted({i for i in chosen if chosen.count(i) > 1})
    if repeated:
        names = ", ".join(map(str, repeated))
        raise InputError(f"slice{'s' if len(repeated) > 1 else ''} {names} "
                         f"{'are' if len(repeated) > 1 else 'is'} named more than once in the "
                         f"calibration slices {chosen}; name each slice once")
    return chosen


def train(volumes, out, config=None, *, bin: int = 1, cancel: CancelToken | None = None,
          on_event: Callable | None = None, **options) -> dict:
    """Train a prior on ``volumes`` (files, arrays in their own units, ``(name, array)`` pairs,
    or ``"ct"`` / ``"mri"`` for the development split; ``bin`` averages ``bin x bin`` blocks
    first) and save it at ``out``; returns the checkpoint's metadata.

    ``config`` is a :class:`~napari_patchdiff.training.TrainConfig`, or give its fields as
    keyword ``options`` (``network="cpu", steps=20000, device="cuda", resume=True, ...``), the
    same options as ``napari-patchdiff train`` and the Prior widget. ``on_event`` receives each
    :class:`~napari_patchdiff.training.TrainEvent`; a cancel saves a checkpoint and raises
    :class:`~napari_patchdiff.events.Cancelled`.
    """
    import dataclasses

    from .priors import read_metadata
    from .training import TrainConfig, train as run, training_volumes

    if config is None:
        config = TrainConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    vols, modality = training_volumes(volumes, config.modality, bin=bin)
    config = dataclasses.replace(config, modality=modality)
    for event in run(vols, out, config, cancel=cancel):
        if on_event is not None:
            on_event(event)
    return read_metadata(out)

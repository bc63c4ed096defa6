"""Test-time adaptation of a prior to the measurement at hand (DDIP / D3IP, patch TTA).

A prior trained on other data (another anatomy, scanner or contrast, or synthetic phantoms)
is adapted while it reconstructs: low-rank adapters (:mod:`napari_patchdiff.priors.lora`) on its
network are trained, before each denoiser call of the sampler, by a few Adam steps on the
self-supervised loss

    ``|| y - A D_theta(x_t, sigma_t) ||^2``  (or ``|| y - A CG_k(D_theta(x_t)) ||^2``, the DDIP
    form with ``k = cg`` data-consistency steps)

at the sampler's current iterate ``x_t`` (Chung & Ye, ECCV 2024; Hu, Song, Fessler, Shen,
IEEE T-CI 2025). :class:`AdaptingPrior` wraps any prior, so every sampler and PnP-ADMM adapts
the same way. For a batch (the slices of a volume, the samples of an ensemble) one adapter is
shared and trained on a random mini-batch of ``batch`` items per step (D3IP), so the cost
does not grow with depth.

Two guards keep the adapter from fitting the measurement noise (deep-image-prior methods
over-fit): a random ``holdout`` fraction of the measurement entries is never trained on, and
when their loss stays clearly above the training entries' loss in the same forward pass (the
adapter has learnt something the held-out entries do not share: noise) the adaptation ends;
and it ends when the training residual reaches the noise level (``noise_std``, known or
estimated: the discrepancy principle). Afterwards the adapter is frozen and keeps being used.

A third guard (``guard`` k > 0) drops an adapter that does not help: before each round the base
network denoises the new iterate too, and when over the last k rounds the adapter's estimate
fitted the training entries worse than the base network's (mean log ratio of the two residuals
above 0) the prior reverts to the base network for the rest of the run. An adapter that helps
fits each new iterate better than the base network before it trains on it; one that has learnt
the previous iterates' particulars does not (``benchmarks/results/adapt_guard.md``, validation
slices: with rounds of 3 steps and DDS on CT, k = 5 reverted the `ct` prior in every run, -0.04
dB instead of -0.93 on lung2 47, and never the first, untextured `phantom` prior, +0.60 to
+0.79 dB kept). It is
on by default where it protects, DDS on CT (``adapt.toml``, ``[adapt.ct.dds]``); it protects
neither PnP-ADMM, whose adapter fits new iterates far better and still loses, nor MRI, where it
never reverts, and those keep gentle defaults. It costs one more network evaluation per round,
without a backward pass.

The defaults depend on the operator, on the method that samples (:func:`adaptation_params`) and
on the prior: a shipped prior may recommend its own values, per method where they differ
(:func:`recommended`; the textured `phantom` prior keeps the operator's gentle values, because
the rounds its first version recommended lose with it, and DDS steps at every 2nd call at a
smaller learning rate).

The adapted prior saves as an ordinary checkpoint (adapters merged into the weights) whose
metadata names its base prior and what it was adapted to (:meth:`AdaptingPrior.save`), so it
can be reused, e.g. for an ensemble.
"""
from __future__ import annotations

import copy
import datetime
import math
import tomllib
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..params import Param
from ..priors.lora import add_lora, lora_parameters, merge_lora
from ..priors.precision import choose_precision
from ..priors.prior import Prior
from ..solvers.method import Method
from .memory import check_adaptation_memory

__all__ = ["ADAPT_PARAMS", "ADAPTATION", "AdaptingPrior", "adapt_prior", "adaptation_params"]

#: the held-out loss may exceed the training loss by this fraction before it counts as a sign
#: of over-fitting ...
GAP_TOLERANCE = 0.2
#: ... in this many adaptation rounds in a row
PATIENCE = 3

ADAPT_PARAMS = (
    Param("steps", int, None, "Adam steps on the adapter per adaptation round", low=1),
    Param("every", int, None, "an adaptation round before every k-th denoiser call (the "
          "first included)", low=1),
    Param("rank", int, None, "rank of the low-rank adapters", low=1),
    Param("lr", float, None, "Adam learning rate of the adapters", low=0, open_low=True),
    Param("cg", int, 0, "data-consistency CG steps inside the loss (0: y - A D(x))",
          low=0),
    Param("tv", float, None, "weight of a total-variation penalty on the adapted estimate in "
          "the loss (0: none)", low=0),
    Param("discrepancy", float, None, "stop when the training residual falls to this multiple "
          "of the noise variance (0: never; the discrepancy principle is 1)", low=0),
    Param("guard", int, 0, "revert to the base prior when, over this many rounds, the "
          "adapter fitted each new iterate's data worse than the base network (0: never)",
          low=0),
    Param("batch", int, 2, "slices (or samples) per adaptation step", low=1),
    Param("holdout", float, 0.1, "fraction of the measurement held out to stop "
          "over-fitting", low=0, high=0.5),
    Param("seed", int, 0, "seed of the held-out split, the mini-batches and the adapter "
          "initialisation", low=0),
)


def _no_run(*args, **kwargs):  # pragma: no cover - an adaptation is not a method of its own
    raise TypeError("adaptation is an option of the diffusion methods, not a method")


#: the adaptation's parameters, resolved like a method's (per-operator tuned values in
#: napari_patchdiff/recon/adapt.toml, read by solvers/defaults.py); not registered as a method
ADAPTATION = Method("adapt", _no_run, ADAPT_PARAMS,
                    doc="test-time adaptation of the prior by a self-supervised data loss")


class AdaptingPrior(Prior):
    """``prior`` with low-rank adapters trained on ``y = A x + n`` during sampling.

    Parameters
    ----------
    prior : a loaded :class:`~napari_patchdiff.priors.Prior` with a network (patch or whole).
    op, y : the operator and the measurement batch ``(B, 1, ...)`` being reconstructed.
    noise_std : the measurement noise std (for the discrepancy stop; 0: never stops on it).
    params : resolved :data:`ADAPT_PARAMS` values (``ADAPTATION.resolve(op, noise_std)``).

    Attributes
    ----------
    history : per adapted denoiser call ``(sigma, train loss, held-out loss)`` (per entry).
    stopped : why the adaptation ended (None while it runs).
    evaluations : network forward+backward passes spent on adaptation.
    """

    #: it adapts to the measurement as it runs (see :attr:`Prior.adapting`)
    adapting = True

    def __init__(self, prior, op, y: torch.Tensor, noise_std: float = 0.0,
                 **params):
        if not hasattr(prior, "denoiser"):
            raise InputError("test-time adaptation needs a prior with a network (load_prior)")
        # before any adapter exists: the rank, the images per step and the image size scale
        # the adapters' parameters, Adam's state and the activations kept for the backward pass
        check_adaptation_memory(prior, int(params["rank"]), op.image_shape,
                                min(int(params["batch"]), int(y.shape[0])))
        super().__init__(dict(prior.metadata), prior.device)
        self.base, self.op, self.params = prior, op, dict(params)
        self.y = y.to(op.device)
        self.noise_std = float(noise_std)
        gen = torch.Generator().manual_seed(int(params["seed"]))
        torch_state = torch.get_rng_state()
        torch.manual_seed(int(params["seed"]))
        net = add_lora(prior.denoiser, int(params["rank"]))
        torch.set_rng_state(torch_state)
        self.inner = copy.copy(prior)
        self.inner.denoiser = net
        self.adapters = lora_parameters(net)
        for p in self.adapters:
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.adapters, lr=float(params["lr"]))
        self.generator = gen
        held = torch.rand(self.y.shape[1:], generator=gen) < float(params["holdout"])
        self.held_out = held.to(op.device)
        self.aty = op.adjoint(self.y) if int(params["cg"]) else None
        self.history: list[tuple[float, float, float]] = []
        #: per round: log(adapted / base training residual) at the new iterate (``guard``)
        self.fresh: list[float] = []
        self.reverted = False
        self.stopped: str | None = None
        self._gaps = 0
        self.evaluations = 0
        self.calls = 0  # denoiser calls so far (the rounds' schedule counts them)
        self.pad = getattr(prior, "pad", None)
        self.patch_size = getattr(prior, "patch_size", None)

    # -- the prior interface --------------------------------------------------------------------
    def _denoise(self, x, sigma, generator):
        if self.reverted:  # the guard dropped the adapter: the base network from now on
            self.calls += 1
            return self.base._denoise(x, sigma, generator)
        if self.stopped is None and self.calls % int(self.params["every"]) == 0:
            self._adapt(x.detach(), sigma)
        self.calls += 1
        out = self.inner._denoise(x, sigma, generator)
        if self.evaluations and not torch.isfinite(out).all():
            raise self._diverged()
        return out

    def to(self, device) -> "AdaptingPrior":
        raise InputError("move the base prior before adapting it")

    def with_precision(self, precision: str | None) -> "AdaptingPrior":
        """This prior, set to run at ``precision`` (see :meth:`Prior.with_precision`). Never a
        copy: the adapters, the optimiser, the counters, the history and the stop are the state
        of one adaptation, which the caller's object must see."""
        if precision is not None:
            chosen = choose_precision(precision, self.device)
            self.precision, self.precision_reason = chosen.name, chosen.reason
        return self

    def check(self, image_shape, modality=None):
        return self.base.check(image_shape, modality)

    # -- adaptation -----------------------------------------------------------------------------
    def _losses(self, d: torch.Tensor, idx) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Per measurement entry: the training entries' and the held-out entries' squared
        residual of the (CG-corrected) estimate ``d``, and the TV penalty on it. In float32
        outside autocast whatever the network's precision: the operators' products (the CT
        matrices are sparse) have no bfloat16 form, and the loss needs the range anyway."""
        rows = idx % self.y.shape[0]  # an ensemble's batch repeats the measurement's slices
        with torch.autocast(d.device.type, enabled=False):
            d = d.float()
            if self.aty is not None:
                d = self.op.solve(d, self.aty[rows], math.inf,
                                  iterations=int(self.params["cg"]))
            r = (self.y[rows] - self.op.forward(d)).abs() ** 2
            train = r[:, ~self.held_out] if self.held_out.any() else r.reshape(r.shape[0], -1)
            held = r[:, self.held_out] if self.held_out.any() else None
            train, held = train.mean(), (held.mean() if held is not None else train.mean())
            weight = float(self.params["tv"])
            return train, held, (weight * total_variation(d) if weight else 0.0)

    def _adapt(self, x: torch.Tensor, sigma) -> None:
        b = x.shape[0]
        k = min(b, int(self.params["batch"]))
        idx = torch.randperm(b, generator=self.generator)[:k].to(x.device)
        s = sigma[idx] if isinstance(sigma, torch.Tensor) and sigma.numel() > 1 else sigma
        floor = (float(self.params["discrepancy"]) * self.noise_std ** 2
                 * (2.0 if self.op.is_complex else 1.0))
        # one patch grid per round: its Adam steps descend one loss
        grid = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        base = self._base_loss(x[idx], s, idx, grid) if int(self.params["guard"]) else None
        for step in range(int(self.params["steps"])):
            with torch.enable_grad():
                d = self.inner._denoise(x[idx], s, torch.Generator().manual_seed(grid))
                if not torch.isfinite(d).all():
                    raise self._diverged()
                train, held, penalty = self._losses(d, idx)
                self.evaluations += 1
                if not torch.isfinite(train.detach()):
                    raise self._diverged()
                loss = (float(train.detach()), float(held.detach()))
                if step == 0 and base is not None and self._worse_than_base(loss[0], base):
                    return
                if self._overfitting(*loss) or (floor > 0 and loss[0] <= floor):
                    self.stopped = self.stopped or "the training residual reached the noise level"
                    break
                self.optimizer.zero_grad(set_to_none=True)
                with torch.autocast(x.device.type, enabled=False):  # the operator's backward too
                    (train + penalty).backward()
                self.optimizer.step()
        sig = float(s if not isinstance(s, torch.Tensor) else s.float().mean())
        self.history.append((sig, *loss))

    def _base_loss(self, x, sigma, idx, grid: int) -> float:
        """The base network's training loss at this iterate and patch grid (for ``guard``)."""
        with torch.no_grad():
            d = self.base._denoise(x, sigma, torch.Generator().manual_seed(grid))
            return float(self._losses(d, idx)[0])

    def _worse_than_base(self, ours: float, base: float) -> bool:
        """The ``guard``: whether the adapter has fitted the new iterates' training entries worse
        than the base network over the last ``guard`` rounds; then it reverts to the base."""
        self.fresh.append(math.log(max(ours, 1e-30) / max(base, 1e-30)))
        k = int(self.params["guard"])
        if len(self.fresh) < k or sum(self.fresh[-k:]) / k <= 0:
            return False
        self.reverted = True
        self.stopped = (f"reverted to the base prior: over the last {k} rounds the adapter fitted "
                        f"the new iterates' data worse than the base network")
        return True

    def _diverged(self) -> InputError:
        """The error of an adaptation whose adapters blew up (a learning rate far too large):
        it says so, not that some image holds NaN."""
        n = self.evaluations
        return InputError(f"the test-time adaptation diverged: the adapted prior's output became "
                          f"NaN or infinite after {n} adapter step{'s' if n != 1 else ''} at "
                          f"learning rate {float(self.params['lr']):g}; use "
                          "a smaller adapt={'lr': ...}, e.g. 10 times smaller")

    def _overfitting(self, train: float, held: float) -> bool:
        """Whether the held-out entries have been fitted clearly worse than the trained ones
        for :data:`PATIENCE` rounds in a row (both losses of one forward pass: same iterate,
        same patch grid), i.e. the adapter learns the training entries' noise."""
        gap = held > train * (1.0 + GAP_TOLERANCE)
        self._gaps = self._gaps + 1 if gap else 0
        if self._gaps >= PATIENCE:
            self.stopped = (f"the held-out loss stayed over {1 + GAP_TOLERANCE:g} times the "
                            f"training loss for {PATIENCE} rounds")
            return True
        return False

    def focus(self, y: torch.Tensor) -> None:
        """Adapt to ``y`` from now on: the measurement of the slices being reconstructed (a
        window of a volume, see :mod:`napari_patchdiff.recon.volumes`); the adapter, its optimiser,
        its history and the held-out split carry on."""
        self.y = y.to(self.op.device)
        if self.aty is not None:
            self.aty = self.op.adjoint(self.y)

    @property
    def last_loss(self) -> float | None:
        """The latest training loss per measurement entry (None before the first)."""
        return self.history[-1][1] if self.history else None

    def summary(self) -> dict[str, Any]:
        """What a report records of the adaptation."""
        h = self.history
        return {"params": dict(self.params), "calls": len(h), "evaluations": self.evaluations,
                "loss_first": h[0][1] if h else None, "loss_last": h[-1][1] if h else None,
                "held_out_last": h[-1][2] if h else None, "stopped": self.stopped,
                "reverted": self.reverted,
                "base_prior": self.base.metadata.get("name")}

    def save(self, path, adapted_to: str = "") -> str:
        """Save the adapted network (adapters merged) as a checkpoint; its metadata names the
        base prior and what it was adapted to. Returns the weights path."""
        from ..priors.checkpoint import save_checkpoint

        meta = {k: v for k, v in self.base.metadata.items() if k != "source"}
        meta.update(name=str(path).rsplit("/", 1)[-1].removesuffix(".safetensors"),
                    adapted_from={k: self.base.metadata.get(k) for k in
                                  ("name", "source", "steps", "created")},
                    adaptation={**self.summary(), "operator": self.op.describe(),
                                "adapted_to": adapted_to},
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds"))
        return str(save_checkpoint(path, merge_lora(self.inner.denoiser), meta))


def total_variation(d: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of the images ``d`` (..., H, W), per pixel: the mean
    absolute difference between neighbours along each axis, summed over the two axes."""
    return ((d[..., 1:, :] - d[..., :-1, :]).abs().mean()
            + (d[..., :, 1:] - d[..., :, :-1]).abs().mean())


#: the settings shipped priors recommend per operator group (:func:`recommended`)
RECOMMENDED = Path(__file__).resolve().parents[1] / "priors" / "shipped" / "adaptation.toml"


def _prior_name(prior) -> str | None:
    """The name in a prior's metadata: of a loaded prior, a shipped prior's name, or a
    checkpoint path (None where it cannot be read)."""
    if hasattr(prior, "metadata"):
        return prior.metadata.get("name")
    from ..priors import read_metadata, shipped_priors

    if prior is None or str(prior) in shipped_priors():
        return prior
    try:
        return read_metadata(prior).get("name")
    except (InputError, OSError):
        return None


def recommended(prior, op, method: str | None = None) -> dict[str, Any]:
    """The adaptation values the shipped prior ``prior`` (loaded, or its name or checkpoint
    path) recommends for ``op`` when ``method`` samples: its row of
    ``priors/shipped/adaptation.toml``, the operator group's under the operator's own, and
    over both the method's sub-row of each (``[phantom.ct.dds]``); ``{}`` for other priors. A
    prior trained far from the data can adapt harder than the operator's default, which suits
    priors trained on the data's kind; one close to the data can keep the gentle values where a
    method's row would adapt harder (the table's comment says which prior does what, and why)."""
    from ..solvers.defaults import GROUPS

    def values(row: dict) -> dict[str, Any]:  # a parameter is {value, cite}, a method a table
        return {k: v["value"] for k, v in row.items() if "value" in v}

    name = _prior_name(prior)
    rows = tomllib.loads(RECOMMENDED.read_text(encoding="utf-8")).get(name, {})
    levels = [rows.get(g, {}) for g, members in GROUPS.items() if op.name in members]
    levels.append(rows.get(op.name, {}))
    levels += [row.get(method, {}) for row in levels] if method else []
    out: dict[str, Any] = {}
    for row in levels:
        out.update(values(row))
    return out


def adaptation_params(prior, op, noise_std: float = 0.0, method: str | None = None,
                      **given) -> dict[str, Any]:
    """The adaptation's values for ``prior`` on ``op`` when ``method`` samples: the ``given``
    ones (checked), over what the shipped prior recommends (:func:`recommended`), over the
    tuned values of ``recon/adapt.toml`` for the operator and the method (its sub-row
    ``[adapt.ct.dds]`` over ``[adapt.ct]``), over the declared defaults."""
    return ADAPTATION.resolve(op, noise_std, within=method,
                              **{**recommended(prior, op, method), **given})


def adapt_prior(prior, problem, adapt, method: str | None = None) -> AdaptingPrior:
    """``prior`` wrapped for adaptation to ``problem`` while ``method`` samples: ``adapt`` is
    True (the defaults of :func:`adaptation_params`) or a dict of :data:`ADAPT_PARAMS` values,
    e.g. ``{"steps": 3, "rank": 8}`` (the rest take those defaults; on the command line
    ``--adapt-steps`` etc.)."""
    if problem.op.couples_slices:  # its loss draws single slices: one adapter per volume
        raise InputError(f"test-time adaptation does not yet work with {problem.op.name}, whose "
                         f"data couple the slices of the volume (its loss is computed on single "
                         f"slices); drop adapt")
    params = adaptation_params(prior, problem.op, problem.noise_std, method,
                               **({} if adapt is True else dict(adapt)))
    return AdaptingPrior(prior, problem.op, problem.y, problem.noise_std, **params)

"""Diffusion samplers for any prior and any operator: DDS, DPS, PaDIS, annealed Langevin; and
PnP-ADMM with the diffusion denoiser. One file per method.

Each is a registered :class:`~napari_patchdiff.solvers.Method`: ``dds(op, y, prior=prior,
noise_std=0.2, cancel=token, nfe=50)`` fills the parameters not given with the same defaults
the CLI and the GUI use, and yields one :class:`~napari_patchdiff.events.StepEvent` per network
evaluation with

* ``estimate``: the current iterate ``(B, 1, H, W)`` (at the last step the reconstruction);
* ``denoised``: the prior's denoised estimate ``D(x, sigma)`` at this step;
* ``nfe``: network evaluations used by this run so far;
* ``info``: ``{'sigma': noise level of this step, ...}``.

Each step first calls ``cancel.check(x)`` with the current iterate, so a token set after step
``k`` raises :class:`~napari_patchdiff.events.Cancelled` carrying the step-``k`` estimate.

``prior`` is any object with the :class:`~napari_patchdiff.priors.Prior` interface
(``prior.denoise(x, sigma, generator=None)`` and a ``prior.nfe`` counter); it and
``noise_source`` are objects, not parameters. A batch ``y`` of ``B`` measurements gives ``B``
samples; repeat one measurement ``B`` times to draw ``B`` posterior samples of it.

All randomness (initial noise and every injected noise) is drawn from one
:class:`~napari_patchdiff.solvers.noise_source.NoiseSource` (``noise_source``, default
``NoiseSource(seed)``); the prior's own randomness (patch shifts) comes from
``noise_source.prior_generator``, which is the same in an antithetic pair. Every method's
evaluation budget is ``nfe``. Images are on the normalised [0, 1] scale; the noise schedules are
EDM's. Tuned defaults: the data file beside each method (``dds.toml``, ``pnp.toml``, ...), read
by :mod:`napari_patchdiff.solvers.defaults`.
"""
# registration order is the order of menus and --help
from .dds import dds
from .dps import dps
from .padis import padis  # noqa: I001
from .langevin import langevin
from .pnp import pnp_admm

__all__ = ["dds", "dps", "padis", "langevin", "pnp_admm"]

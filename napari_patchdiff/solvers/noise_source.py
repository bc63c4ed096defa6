"""One seeded source for all the randomness of a sampler, with antithetic twins.

Every diffusion sampler in :mod:`napari_patchdiff.solvers.diffusion` draws its initial noise and
every injected noise from :meth:`NoiseSource.randn`, in a fixed order. ``NoiseSource(seed,
antithetic=True)`` returns exactly the negation of the stream that ``NoiseSource(seed)`` returns,
so running a sampler twice with the two gives an antithetic pair (Jia et al., arXiv 2506.06185:
the WHOLE noise stream is negated, initial and injected noise alike).

Randomness that must *not* be negated (the random grid shift of the PaDIS patch denoiser) comes
from :attr:`NoiseSource.prior_generator`, a separate generator seeded from the same seed and
identical in both members of a pair.

``NoiseSource(seed, group=m, member=j)`` (``m`` even) is member ``j`` of a randomised
quasi-Monte Carlo group: an antithetic Latin hypercube. At every scalar of every draw the ``m``
members share one sign ``s`` and ``m / 2`` magnitudes Latin-hypercube stratified in the
half-normal distribution (``|z_i| = Phi^{-1}((1 + u_i) / 2)``, ``u_i = (pi_i + v_i) / (m / 2)``
with ``pi`` a random permutation of the strata and ``v_i`` uniform jitter); members ``2i`` and
``2i + 1`` take ``+s |z_i|`` and ``-s |z_i|``. Each member is marginally exactly N(0, 1), so every
sample is a valid posterior sample; the group's noise sums to zero at every scalar (like an
antithetic pair) and its magnitudes are stratified (which antithetic pairs leave to chance).
Groups with different seeds are independent replicates, so a statistic's confidence interval is
computed over group means (``group=2`` has one stratum: an antithetic pair). Every member regenerates its group's numbers from the shared seed, so
members may run in any batch and order.

Draws are made on the CPU in float64 and then moved to ``device``/``dtype``, so a seed gives
the same numbers on every device (up to the final rounding to ``dtype``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError

__all__ = ["DESIGNS", "GROUP", "NoiseSource", "StackedNoise", "sample_seed", "run_noise",
           "as_noise_source"]

#: ensemble noise designs (see :mod:`napari_patchdiff.uncertainty.ensemble`)
DESIGNS = ("iid", "antithetic", "rqmc")
#: samples that belong together in each design: one, a pair, a quasi-Monte Carlo group
GROUP = {"iid": 1, "antithetic": 2, "rqmc": 4}

#: offset between the seed of the Gaussian stream and that of the prior's generator
_PRIOR_SEED_OFFSET = 0x5DEECE66D


class NoiseSource:
    """Deterministic Gaussian noise stream.

    Parameters
    ----------
    seed : integer seed of the stream.
    antithetic : if True, every draw is the negation of the draw ``antithetic=False`` gives.
    device, dtype : where and how the draws are returned.

    Attributes
    ----------
    draws : number of :meth:`randn` calls so far.
    numbers : number of scalars drawn so far.
    prior_generator : a CPU ``torch.Generator`` for the prior's own randomness (patch shifts),
        seeded from ``seed`` and NOT negated in the antithetic twin.
    """

    def __init__(self, seed: int = 0, antithetic: bool = False, device="cpu",
                 dtype: torch.dtype = torch.float32, *, group: int = 1, member: int = 0):
        self.seed = int(seed)
        self.antithetic = bool(antithetic)
        self.group, self.member = int(group), int(member)
        if self.group != 1 and (self.group < 2 or self.group % 2):
            raise ValueError(f"a quasi-Monte Carlo group has an even size >= 2, got {group}")
        if not 0 <= self.member < self.group:
            raise ValueError(f"member {member} is not in a group of {group}")
        self.device = torch.device(device)
        self.dtype = dtype
        self._gen = torch.Generator().manual_seed(self.seed)
        self.prior_generator = torch.Generator().manual_seed(
            (self.seed + _PRIOR_SEED_OFFSET) % (2**63))
        self.draws = 0
        self.numbers = 0

    def randn(self, shape, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """Standard normal tensor of ``shape`` (negated if ``antithetic``)."""
        shape = tuple(int(s) for s in shape)
        z = (torch.randn(shape, generator=self._gen, dtype=torch.float64) if self.group == 1
             else self._group_draw(shape))
        if self.antithetic:
            z = -z
        self.draws += 1
        self.numbers += z.numel()
        return z.to(device=self.device if device is None else device,
                    dtype=self.dtype if dtype is None else dtype)

    def _group_draw(self, shape) -> torch.Tensor:
        """This member's share of one antithetic Latin-hypercube draw of the group."""
        k = self.group // 2
        keys = torch.rand((k, *shape), generator=self._gen, dtype=torch.float64)
        jitter = torch.rand((k, *shape), generator=self._gen, dtype=torch.float64)
        sign = torch.rand(shape, generator=self._gen, dtype=torch.float64) < 0.5
        i = self.member // 2
        stratum = (keys < keys[i]).sum(0).to(torch.float64)  # rank of i: a random permutation
        u = (stratum + jitter[i]) / k
        mag = math.sqrt(2.0) * torch.erfinv(u.clamp(max=1 - 1e-16))  # Phi^{-1}((1 + u) / 2)
        positive = sign if self.member % 2 == 0 else ~sign
        return torch.where(positive, mag, -mag)

    def twin(self) -> "NoiseSource":
        """A fresh source with the same seed and the opposite ``antithetic`` flag."""
        return NoiseSource(self.seed, not self.antithetic, self.device, self.dtype,
                           group=self.group, member=self.member)

    def __repr__(self) -> str:
        group = f", group={self.group}, member={self.member}" if self.group > 1 else ""
        return (f"NoiseSource(seed={self.seed}, antithetic={self.antithetic}{group}, "
                f"device={self.device}, dtype={self.dtype})")


def sample_seed(seed: int, k: int) -> int:
    """The seed of stream ``k`` of an ensemble with base ``seed`` (independent streams)."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(k)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class StackedNoise(NoiseSource):
    """Several noise streams stacked along the batch axis, so one sampler run draws many samples.

    ``sources[k]`` feeds ``counts[k]`` consecutive batch items (e.g. the D slices of one sample
    volume); every :meth:`randn` of shape ``(sum(counts), ...)`` draws ``(counts[k], ...)`` from
    each source in turn. A sample therefore sees exactly the stream its own source gives, so an
    antithetic twin ``NoiseSource(s, antithetic=True)`` placed in the same batch as
    ``NoiseSource(s)`` yields the negated WHOLE noise stream. The prior's generator (patch shifts,
    shared by the whole batch) is seeded from ``prior_seed``.
    """

    def __init__(self, sources, counts, prior_seed: int = 0, device="cpu",
                 dtype: torch.dtype = torch.float32):
        super().__init__(prior_seed, False, device, dtype)
        self.sources = list(sources)
        self.counts = [int(c) for c in counts]
        if len(self.sources) != len(self.counts) or not self.sources or min(self.counts) < 1:
            raise ValueError("StackedNoise needs one positive count per source")

    def randn(self, shape, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if not shape or shape[0] != sum(self.counts):
            raise ValueError(f"StackedNoise draws batches of {sum(self.counts)}, asked for {shape}")
        parts = [src.randn((c, *shape[1:]), torch.float64, "cpu")
                 for src, c in zip(self.sources, self.counts)]
        self.draws += 1
        self.numbers += sum(p.numel() for p in parts)
        return torch.cat(parts).to(device=self.device if device is None else device,
                                   dtype=self.dtype if dtype is None else dtype)

    def twin(self) -> "StackedNoise":
        return StackedNoise([s.twin() for s in self.sources], self.counts, self.seed,
                            self.device, self.dtype)

    def __repr__(self) -> str:
        return f"StackedNoise({len(self.sources)} streams, counts={self.counts})"


#: run ``k`` of an ensemble (a batch) or of a volume (a window) seeds its prior's generator (the
#: patch shifts) from stream ``PRIOR_STREAMS + k``, apart from the streams of samples and slices
PRIOR_STREAMS = 10**6


def run_noise(sources, counts, seed: int, run: int, device="cpu",
              dtype: torch.dtype = torch.float32) -> StackedNoise:
    """The noise of run ``run`` of base ``seed``: ``sources`` stacked (``counts`` batch items
    each), the prior's generator seeded from stream :data:`PRIOR_STREAMS` + ``run``. A run's
    noise depends on these alone, not on where or after what it runs."""
    return StackedNoise(sources, counts, prior_seed=sample_seed(seed, PRIOR_STREAMS + run),
                        device=device, dtype=dtype)

def as_noise_source(noise: NoiseSource | None, seed: int, device, dtype) -> NoiseSource:
    """``noise`` itself, or a new :class:`NoiseSource` from ``seed`` if it is None."""
    if noise is None:
        return NoiseSource(seed, False, device, dtype)
    if not isinstance(noise, NoiseSource):
        raise InputError(f"noise_source must be a NoiseSource or None, got "
                         f"{type(noise).__name__}")
    return noise

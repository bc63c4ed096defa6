"""Where the runs of a reconstruction execute: in this process (the default) or on a Ray cluster.

Every run goes through an executor: the one run of an image, the windows of a volume
(:mod:`napari_patchdiff.recon.volumes`) and the batches of an ensemble
(:mod:`napari_patchdiff.uncertainty.ensemble`), from the API, the command line and the GUI's
jobs alike. This module is the one place that chooses (:func:`resolve_executor`):
``cluster=None`` or ``"local"`` runs everything in this process (:data:`LOCAL`); ``"ray"``
starts a Ray instance on this machine (or uses the one this process is already connected to);
``"ray:ADDRESS"`` connects to an existing cluster (``ray start --head`` prints the address;
``ray:auto`` finds one started on this machine). A :class:`RayExecutor` may also be given
directly, e.g. with a number of workers.

What an executor runs is a *work* (:class:`Work`): the measurement, the operator and the prior,
and ``steps(item, cancel)``, the step generator of one item (one batch of an ensemble, one
window of a volume; a pure function of the item). :meth:`Executor.stream` yields
:class:`ItemEvent` s: the :class:`LocalExecutor` runs the items one after another on the work's
own objects and yields every step as it goes, then the item's end; a :class:`RayExecutor`
ships the work to its workers (picklable: the operator travels as a recipe, the prior on the
CPU; ``load(device)`` rebuilds them once per worker, so a prior is loaded once per worker, not
once per batch), one Ray actor per worker (a GPU each where the cluster has GPUs, else
``threads`` CPUs), hands each the next item as soon as it is free, and yields each item's last
step (:meth:`Work.event`, rebuilt from what the worker returns) as items finish, in whatever
order they finish. Since every item draws its noise from streams seeded by (seed, sample or
slice index) and (seed, batch or window index) only, a result does not depend on the executor
or the worker that computed it, nor on the number of workers.

Faults: a worker process that dies mid-item (killed, out of memory, a lost node) is restarted
by Ray (``max_restarts``) and its item run again (``max_task_retries``); an item's result is
yielded once, when it arrives, so nothing is lost or duplicated. A cancel stops the local run
at its next step (or between items) and kills the Ray actors (stopping their remote work);
either raises :class:`~napari_patchdiff.events.Cancelled`, and the events already yielded stay
with the caller. Test-time adaptation trains its adapter through the steps in turn, so it runs
locally only (:meth:`Executor.check_adaptation`).

How a Ray executor reaches its cluster (the address probed first), its worker actor and the
translation of Ray's errors are :mod:`napari_patchdiff.recon.ray_cluster`, the one module that
imports ``ray``, and only when a Ray executor is used: the package works without it
(``pip install "napari-patchdiff[ray]"`` adds it).
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..events import Cancelled, CancelToken, Drive, StepEvent, run_to_end
from .ray_cluster import INSTALL, Worker, connect, fetch, ray_available, worker_facts

__all__ = ["Executor", "LocalExecutor", "LOCAL", "RayExecutor", "ItemEvent", "Work",
           "resolve_executor", "parse_cluster", "CLUSTER_CHOICES", "OperatorRecipe",
           "ray_available"]

#: what the cluster option accepts (the GUI's choices; ``ray:ADDRESS`` is typed in)
CLUSTER_CHOICES = ("local", "ray")
#: seconds to wait for a cluster address to answer before calling it unreachable
CONNECT_TIMEOUT = 5.0
#: how often a worker is restarted, and an item retried, after its process dies
RESTARTS = 3
#: seconds between checks of the cancel token while waiting for results
POLL = 0.1


@dataclass(frozen=True)
class ItemEvent:
    """What :meth:`Executor.stream` yields: ``event``, a step of item ``position``'s run (every
    step as it goes on the local executor; the last one, rebuilt from the worker's result, on a
    cluster), and/or ``finished``: that run has ended (``event`` was, or is, its last step)."""

    position: int
    event: StepEvent | None = None
    finished: bool = False


class Executor:
    """Runs the items of a work; :attr:`remote` is False for the in-process executor."""

    remote = False
    name = "local"

    def stream(self, work: "Work", items: Sequence, cancel: CancelToken | None = None
               ) -> Iterator[ItemEvent]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name}

    def workers_here(self, items: int) -> int:
        """How many of ``items`` this machine runs at once (for the memory estimate of
        :mod:`napari_patchdiff.recon.memory`): one, here."""
        return 1

    def check_adaptation(self, adapting) -> None:
        """InputError if a prior is to adapt (``adapting`` true: ``adapt`` given, or a prior
        already adapting) on a remote executor: the adapter trains through the run's steps
        (an ensemble's batches) in turn, so adaptation runs locally only."""
        if self.remote and adapting:
            # each phrase the command line rewrites (cli._common.API_WORDS) in one piece
            raise InputError("test-time adaptation trains its adapter through the run's steps "
                             "(an ensemble's batches) in turn, so it runs locally only: "
                             "drop cluster=, or adapt once here "
                             "(solve(..., adapt=True) and result.prior.save(PATH)) and "
                             "use prior=PATH on the cluster")


class LocalExecutor(Executor):
    """Items one after another in this process, on the work's own operator, measurement and
    prior (no copies): every step of an item's run as it goes, then the item's end. The cancel
    token is checked by the method at every step and here between items."""

    def stream(self, work, items, cancel=None):
        for i, item in enumerate(items):
            if i and cancel is not None:
                cancel.check()
            drive = Drive(work.steps(item, cancel), what=work.what)
            for event in drive:
                yield ItemEvent(i, event)
            drive.final()
            yield ItemEvent(i, finished=True)


#: the in-process executor (``cluster=None`` or ``"local"``)
LOCAL = LocalExecutor()


@dataclass
class RayExecutor(Executor):
    """Items on a Ray cluster: one actor per worker, results as they finish.

    address : None (this process's Ray connection if there is one, else a new Ray instance on
        this machine), or a cluster address (``host:port`` of ``ray start --head``,
        ``ray://host:10001`` for Ray Client, or ``auto``).
    workers : actors to start (default: one per GPU of the cluster where it has GPUs, else one
        per ``threads`` CPUs); never more than there are items.
    threads : torch CPU threads (and Ray CPUs) of each worker.
    gpus : GPUs per worker (default: 1 where the cluster has GPUs, else 0); a worker with a GPU
        runs on ``cuda``, one without on the CPU.
    """

    address: str | None = None
    workers: int | None = None
    threads: int = 1
    gpus: float | None = None
    restarts: int = RESTARTS
    #: what the last :meth:`stream` measured: per-worker start (load) seconds, pids, devices
    last: dict[str, Any] = field(default_factory=dict, repr=False)

    remote = True
    name = "ray"

    def __post_init__(self):
        for what, value, low in (("workers", self.workers, 1), ("threads", self.threads, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise InputError(f"{what} must be a positive integer, got {value!r}")
        if self.gpus is not None and not (isinstance(self.gpus, (int, float)) and self.gpus >= 0):
            raise InputError(f"gpus per worker must be a number >= 0, got {self.gpus!r}")
        if self.address is not None:
            self.address = str(self.address).strip()
            if not self.address:
                raise InputError("ray:ADDRESS needs an address, e.g. ray:10.0.0.5:6379")

    # -- connection ---------------------------------------------------------------------------
    def connect(self):
        """Connect to (or start) the cluster; InputError if it cannot be reached (see
        :func:`napari_patchdiff.recon.ray_cluster.connect`)."""
        return connect(self.address, CONNECT_TIMEOUT)

    def workers_here(self, items: int) -> int:
        """How many of ``items`` run at once on this machine: the workers of a Ray instance
        here (``address`` None or ``auto``): ``workers``, else one per GPU of this machine or,
        without GPUs, one per ``threads`` CPUs, never more than the items; none for a cluster's
        address (its workers' memory is the cluster's)."""
        if self.address not in (None, "auto"):
            return 0
        if self.workers is not None:
            n = self.workers
        else:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            n = gpus or (os.cpu_count() or 1) // self.threads
        return max(1, min(n, items))

    def describe(self) -> dict[str, Any]:
        out = {"executor": "ray", "address": self.address or "local Ray instance"}
        out.update({k: v for k, v in self.last.items() if k in ("workers", "devices", "hosts")})
        return out

    # -- running ------------------------------------------------------------------------------
    def _plan(self, ray, n_items: int) -> tuple[int, float, int]:
        resources = ray.cluster_resources()
        cluster_gpus = float(resources.get("GPU", 0))
        gpus = (1.0 if cluster_gpus >= 1 else 0.0) if self.gpus is None else float(self.gpus)
        if self.workers is not None:
            workers = self.workers
        elif gpus > 0:
            workers = max(1, int(cluster_gpus // gpus))
        else:
            workers = max(1, int(float(resources.get("CPU", 1)) // self.threads))
        return max(1, min(workers, n_items)), gpus, self.threads

    def stream(self, work, items, cancel=None):
        """Run ``work.run(item)`` for every item on the cluster; yield each item's last step
        (:meth:`Work.event`) as it finishes (its ``info`` gains ``worker`` (pid), ``host``,
        ``device``, ``worker_seconds``, ``load_seconds`` and ``wall_seconds`` from hand-out to
        arrival)."""
        items = list(items)
        if not items:
            return
        ray = self.connect()
        n, gpus, threads = self._plan(ray, len(items))
        actor_class = ray.remote(num_cpus=threads, num_gpus=gpus, max_restarts=self.restarts,
                                 max_task_retries=self.restarts)(Worker)
        t0 = time.perf_counter()
        # serialised once; each worker fetches and loads it at its first item (and again
        # after a restart). Nested in a list so that Ray hands the reference, not the value.
        shared = [ray.put(work)]
        actors = [actor_class.remote(threads) for _ in range(n)]
        self.last = {"workers": n, "gpus_per_worker": gpus, "threads": threads,
                     "put_seconds": round(time.perf_counter() - t0, 4)}
        queue = list(range(len(items)))
        pending: dict[Any, tuple[int, Any, float]] = {}

        def hand_out(actor) -> None:
            i = queue.pop(0)
            pending[actor.run.remote(shared, items[i])] = (i, actor, time.perf_counter())

        try:
            for actor in actors:
                if queue:
                    hand_out(actor)
            while pending:
                if cancel is not None and cancel.cancelled:
                    raise Cancelled("cancelled by the user")
                done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL)
                for ref in done:
                    i, actor, started = pending.pop(ref)
                    out = fetch(ray, ref, self.restarts)
                    out["wall_seconds"] = time.perf_counter() - started
                    if queue:
                        hand_out(actor)
                    yield ItemEvent(i, work.event(out), finished=True)
            self.last.update(worker_facts(ray, actors))
        finally:
            for actor in actors:  # stops remote work on a cancel, an error or a closed stream
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass


def parse_cluster(spec) -> Executor:
    """``None`` / ``"local"`` -> the local executor; ``"ray"`` -> a :class:`RayExecutor` on this
    machine's Ray; ``"ray:ADDRESS"`` -> one connected to ADDRESS; an :class:`Executor` as is.
    InputError for anything else, or when Ray is asked for but not installed."""
    if spec is None or isinstance(spec, Executor):
        return LOCAL if spec is None else spec
    if not isinstance(spec, str):
        raise InputError(f"cluster must be 'local', 'ray' or 'ray:ADDRESS', got "
                         f"{type(spec).__name__}")
    text = spec.strip()
    if text.lower() in ("", "local"):
        return LOCAL
    kind, sep, address = text.partition(":")
    if kind.lower() != "ray":
        raise InputError(f"unknown cluster {spec!r}: choose local, ray (a Ray instance on this "
                         f"machine) or ray:ADDRESS (an existing Ray cluster)")
    if not ray_available():
        raise InputError(INSTALL)
    if sep and not address.strip():
        raise InputError("ray:ADDRESS needs an address, e.g. ray:10.0.0.5:6379")
    return RayExecutor(address.strip() if sep else None)


def resolve_executor(cluster=None, workers: int | None = None) -> Executor:
    """The executor for ``cluster`` (see :func:`parse_cluster`), with ``workers`` Ray workers
    (an error with the local executor)."""
    ex = parse_cluster(cluster)
    if workers is not None:
        if not ex.remote:
            raise InputError("workers= (--workers) needs a Ray cluster: add cluster='ray' "
                             "(--cluster ray)")
        ex = RayExecutor(ex.address, workers, ex.threads, ex.gpus, ex.restarts)
    return ex


@dataclass(frozen=True)
class OperatorRecipe:
    """How a worker rebuilds an operator (operators hold ODL/ASTRA objects that do not pickle):
    its class, image shape, dtype and parameters."""

    cls: type
    image_shape: tuple[int, ...]
    dtype: Any
    params: dict[str, Any]

    @classmethod
    def of(cls, op) -> "OperatorRecipe":
        return cls(type(op), tuple(op.image_shape), op.dtype, dict(op.params))

    def build(self, device):
        return self.cls(self.image_shape, device=device, dtype=self.dtype, **self.params)


class Work:
    """The runs of a reconstruction as items (see the module docstring): the operator, the
    measurement and the prior, and :meth:`steps`, the step generator of one item. Subclasses
    give ``what`` (for messages) and :meth:`solver`. Here (the local executor) the work runs on
    the problem's own objects; pickled for a worker it carries the operator as a recipe and
    the measurement and the prior on the CPU, and :meth:`load` rebuilds them on the worker's
    device."""

    what = "the work"
    #: what a worker adds to an item's result; :meth:`event` hands them on in ``info``
    FACTS = ("worker", "host", "device", "worker_seconds", "wall_seconds", "load_seconds")

    def __init__(self, problem, prior):
        self.op, self.y, self.volume, self.prior = problem.op, problem.y, problem.volume, prior

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if state["op"] is not None:  # operators hold ODL/ASTRA objects that do not pickle
            state.update(recipe=OperatorRecipe.of(self.op), op=None)
        state["y"] = self.y.detach().to("cpu")
        prior = self.prior
        if prior is not None and str(getattr(prior, "device", "cpu")) != "cpu":
            state["prior"] = copy.deepcopy(prior).to("cpu")
        return state

    def load(self, device) -> None:
        """On a worker: the operator rebuilt on ``device``, the measurement and prior moved."""
        self.op = self.recipe.build(device)
        self.y = self.y.to(self.op.device)
        if self.prior is not None:
            self.prior.to(self.op.device)

    def solver(self, item, cancel: CancelToken | None = None) -> Iterator[StepEvent]:
        """The method's step generator for ``item``."""
        raise NotImplementedError

    def steps(self, item, cancel: CancelToken | None = None) -> Iterator[StepEvent]:
        """The step events of ``item``'s run; with an adapting prior each ``info`` carries
        ``adapt_loss``, the latest self-supervised loss."""
        adapting = getattr(self.prior, "adapting", False)
        for event in self.solver(item, cancel):
            if adapting and self.prior.last_loss is not None:
                event.info["adapt_loss"] = self.prior.last_loss
            yield event

    def run(self, item) -> dict:
        """On a worker: ``item``'s run to the end, its last step as plain values (the estimate
        ``(B, H, W)`` on the CPU, the scalar ``info``; ``nfe``: the network evaluations of this
        run)."""
        nfe0 = int(getattr(self.prior, "nfe", 0))
        last = run_to_end(self.steps(item), what=self.what)
        return {"estimate": last.estimate.detach().to("cpu").numpy()[:, 0], "step": last.step,
                "total": last.total, "nfe": int(getattr(self.prior, "nfe", 0)) - nfe0,
                "info": {k: v for k, v in last.info.items()
                         if isinstance(v, (int, float, str, bool))}}

    def event(self, out: dict) -> StepEvent:
        """Here: the last step of a worker's run (:meth:`run`'s result), on this operator's
        device, with the worker's :data:`FACTS` in ``info``."""
        est = torch.from_numpy(np.array(out["estimate"]))[:, None]  # writable (Ray's are not)
        info = {**out["info"], **{k: out[k] for k in self.FACTS if k in out}}
        return StepEvent(out["step"], out["total"], est.to(self.op.device, self.op.dtype), None,
                         nfe=out["nfe"], info=info)

"""The one place a torch device named by the user is checked: :func:`parse_device`.

The CLI's ``--device``, the API's ``device=`` (:func:`~napari_patchdiff.recon.problem.simulate`,
:meth:`~napari_patchdiff.recon.problem.Problem.to`, :func:`~napari_patchdiff.api.calibrate`, the
training configuration, :func:`~napari_patchdiff.priors.load_prior`) and the GUI's jobs (through
``Problem.to``) all go through it, so a device that cannot run a reconstruction is one clear
:class:`~napari_patchdiff.errors.InputError` instead of torch's ``RuntimeError``,
``AssertionError`` or a failure deep inside a solver.
"""
from __future__ import annotations

import torch

from .errors import InputError

__all__ = ["parse_device"]

_HINT = "use cpu, cuda, cuda:N or mps"


def parse_device(device, what: str = "device") -> torch.device:
    """``device`` (a name like ``"cpu"``, ``"cuda:1"``, a ``torch.device`` or a CUDA index) as
    a ``torch.device`` this computer can run on; InputError otherwise: an unknown name, a CUDA
    or MPS device torch does not see, or ``"meta"`` (tensors without data)."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, (str, int)) and not isinstance(device, bool):
        try:
            dev = torch.device(device.strip() if isinstance(device, str) else device)
        except (RuntimeError, TypeError, ValueError):
            raise InputError(f"unknown {what} {device!r}; {_HINT}") from None
    else:
        raise InputError(f"{what} must be a name such as 'cpu', 'cuda' or 'cuda:1' (or a "
                         f"torch.device), got {type(device).__name__} {device!r}")
    name = str(device)
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise InputError(f"{what} {name!r} holds no data (tensor shapes only), so it cannot "
                         f"reconstruct anything; {_HINT}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{what} {name!r} asked for, but torch sees no CUDA device; use "
                             f"cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(f"{what} {name!r} asked for, but torch sees {count} CUDA "
                             f"device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
        return dev
    backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(
        torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if callable(available) and available():
        return dev
    raise InputError(f"{what} {name!r} is not available on this computer; {_HINT}")

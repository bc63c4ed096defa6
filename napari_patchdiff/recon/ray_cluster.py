"""Talking to Ray for :class:`~napari_patchdiff.recon.executors.RayExecutor`: reaching a cluster
(probing its address first, keeping Ray's own retry logs back), the worker actor that runs a
work's items, and Ray's errors turned into the package's.

The executor (:mod:`napari_patchdiff.recon.executors`) decides what runs where; this module is
how it gets there. It is the only module that imports ``ray``, and only when a Ray executor is
used: the package works without it (``pip install "napari-patchdiff[ray]"`` adds it).
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
from typing import Any

from ..errors import InputError, JobError
from ..events import Cancelled

__all__ = ["INSTALL", "ray_available", "import_ray", "connect", "probe", "quiet_stderr",
           "Worker", "fetch", "worker_facts", "first_line"]

#: what to do when the Ray executor is asked for but ``ray`` is not installed
INSTALL = 'the Ray executor needs the ray package: pip install "napari-patchdiff[ray]"'


def ray_available() -> bool:
    """Whether ``ray`` can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def import_ray():
    """The ``ray`` module; InputError saying how to install it if it is missing."""
    try:
        import ray
    except ImportError:
        raise InputError(INSTALL) from None
    return ray


def connect(address: str | None, timeout: float):
    """Connect to (or start) the cluster at ``address`` (None: this process's connection if it
    has one, else a new Ray instance on this machine); the ``ray`` module. InputError if it
    cannot be reached within ``timeout`` seconds (see :func:`probe`)."""
    ray = import_ray()
    if address is not None:
        probe(address, timeout)
    if ray.is_initialized():  # this process's connection (e.g. a script's ray.init)
        current = _current_address(ray)
        if address not in (None, "auto") and current and not _same_address(address, current):
            raise InputError(f"this process is already connected to the Ray cluster at "
                             f"{current}, not {address}: use cluster='ray' for it, or "
                             f"call ray.shutdown() first")
        return ray
    if address is None:
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        return ray
    try:
        with quiet_stderr():
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except Exception as exc:  # ConnectionError, RuntimeError, ...: say where and why
        raise InputError(f"cannot connect to the Ray cluster at {address}: "
                         f"{first_line(exc)}") from None
    return ray


def fetch(ray, ref, restarts: int) -> dict:
    """``ray.get`` with the worker's own error re-raised (InputError stays InputError);
    ``restarts``: how often the worker was restarted before Ray gave up on it."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, (InputError, JobError, Cancelled)):
            raise cause from None
        raise JobError(f"a Ray worker failed: {first_line(cause or exc)}") from None
    except ray.exceptions.RayActorError as exc:
        raise JobError(f"a Ray worker died {restarts + 1} times on the same item and was given "
                       f"up: {first_line(exc)}") from None


def worker_facts(ray, actors) -> dict[str, Any]:
    """Where the ``actors`` (:class:`Worker` s) ran and what loading cost them, for reports
    (empty if they cannot tell)."""
    try:
        facts = ray.get([a.facts.remote() for a in actors], timeout=10)
    except Exception:  # noqa: BLE001 - facts are for reports only
        return {}
    return {"devices": sorted({f["device"] for f in facts}),
            "hosts": sorted({f["host"] for f in facts}),
            "load_seconds": [round(f["load_seconds"], 4) for f in facts],
            "loads": sum(f["loads"] for f in facts)}


class Worker:
    """One Ray actor: fetches and loads the work once (prior, operator), then runs items."""

    def __init__(self, threads: int = 1):
        import ray
        import torch

        torch.set_num_threads(int(threads))
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.work, self.load_seconds, self.loads = None, 0.0, 0

    def run(self, shared: list, item) -> dict:
        import ray

        t0 = time.perf_counter()
        loaded = 0.0
        if self.work is None:  # the first item of this worker process
            self.work = ray.get(shared[0])
            self.work.load(self.device)
            loaded = self.load_seconds = time.perf_counter() - t0
            self.loads += 1
        t1 = time.perf_counter()
        out = dict(self.work.run(item))
        out.update(worker=os.getpid(), host=socket.gethostname(), device=self.device,
                   worker_seconds=time.perf_counter() - t1, load_seconds=loaded)
        return out

    def pid(self) -> int:
        return os.getpid()

    def facts(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": self.device,
                "load_seconds": self.load_seconds, "loads": self.loads}


def _current_address(ray) -> str | None:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - older or client connections
        return None


def _same_address(a: str, b: str) -> bool:
    def norm(x: str) -> tuple[str, str]:
        x = x.split("://", 1)[1] if "://" in x else x
        host, _, port = x.rpartition(":")
        try:
            host = socket.gethostbyname(host.strip("[]"))
        except OSError:
            pass
        return host, port

    return norm(a) == norm(b)


def first_line(exc) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


#: an HTTP/2 client's connection preface and an empty SETTINGS frame. A Ray cluster's address
#: (its GCS, or the Ray Client server of ``ray://``) is a gRPC server, which answers with a
#: SETTINGS frame of its own (a 9-byte frame header of type 4) at once
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4


def probe(address: str, timeout: float) -> None:
    """InputError unless ``host:port`` (of ``[ray://]host:port``) answers as a gRPC server (a
    Ray cluster does) within ``timeout`` seconds in all.

    A TCP connect alone is not enough: a firewall or a proxy on the way accepts connections to
    any address, and another service may hold the port; ray.init then retried for half a
    minute, printing its own logs, before it failed. So the probe also says hello in HTTP/2 and
    waits for the server's SETTINGS frame (with TLS, ``RAY_USE_TLS``, only the connect)."""
    if address == "auto":
        return
    bare = address.split("://", 1)[1] if "://" in address else address
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"Ray cluster address {address!r}: expected HOST:PORT (e.g. "
                         f"ray:10.0.0.5:6379, the address `ray start --head` prints), "
                         f"ray://HOST:10001 or ray:auto")
    deadline = time.monotonic() + timeout
    where = f"cannot reach the Ray cluster at {address}"
    hint = "is `ray start --head` running there, and is this its address?"
    head, connected = b"", False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            connected = True
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            conn.sendall(_HTTP2_HELLO)
            while len(head) < 9:
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                part = conn.recv(9 - len(head))
                if not part:
                    break
                head += part
    except socket.timeout:
        what = ("it accepted the connection but did not answer" if connected else
                "the connection timed out")
        raise InputError(f"{where} ({what} within {timeout:g} s): {hint}") from None
    except OSError as exc:
        raise InputError(f"{where} ({exc.strerror or exc} after at most {timeout:g} s): is "
                         f"`ray start --head` running there, and is the port open?") from None
    if len(head) < 9 or head[3] != _SETTINGS:
        raise InputError(f"{where}: something answers on that port, but not as a Ray cluster "
                         f"does (gRPC): {hint}")


@contextlib.contextmanager
def quiet_stderr():
    """Ray's own output during ``ray.init``: its C++ core writes to the stderr file descriptor
    (``logging_level`` does not reach it), a line per retry while a cluster does not answer. It
    goes to a temporary file and is written to stderr afterwards only when the connect
    succeeded; a failure is the one line of the InputError."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr descriptor: nothing to quieten
        yield
        return
    ok = False
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                tmp.seek(0)
                text = tmp.read()
                if text:
                    os.write(2, text)

"""Files on disk: atomic writes with the umask's permissions, and the size checks made before
reading.

Every file the package writes goes through a temporary file in the target folder that is moved
into place (:func:`atomic_output`, :func:`atomic_write_text`), so a failure leaves no partial
file and an existing one as it was; the result gets the permissions of an ordinary new file
(:func:`apply_umask`: ``0o666`` less the umask, ``0o777`` less it for a folder). Before data
are read, :func:`check_file_size` compares a header with the file and :func:`check_memory`
the data with the computer's memory; both raise
:class:`~napari_patchdiff.errors.InputError` with a one-line message.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = [
    "apply_umask",
    "atomic_output",
    "atomic_write_text",
    "check_file_size",
    "check_memory",
    "one_line",
    "physical_memory",
    "process_umask",
    "temp_path",
]

#: suffixes of compressed files, kept together with the suffix before them (``.nii.gz``)
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def process_umask() -> int:
    """The process umask: from ``/proc/self/status`` where it can be read without changing it
    (Linux), else set and restored at once."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path, directory: bool = False) -> None:
    """Give ``path`` the permissions of an ordinary new file, ``0o666`` less the umask (for a
    folder, ``directory=True``: ``0o777`` less the umask, what a plain ``mkdir`` gives).

    :mod:`tempfile` creates files ``0o600`` and folders ``0o700``; call this on one before
    moving it into place with ``os.replace`` so that the result is readable as other new files
    are (e.g. ``0o644`` under umask ``0o022``).
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~process_umask())


def temp_path(folder, suffix: str) -> Path:
    """A new empty temporary file in ``folder`` (same file system, so os.replace is atomic)."""
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)


def _full_suffix(p: Path) -> str:
    """The suffix a writer looks at: ``.tif``, or ``.nii.gz`` for a compressed file."""
    if p.suffix.lower() in _COMPRESSED and Path(p.stem).suffix:
        return Path(p.stem).suffix + p.suffix
    return p.suffix


@contextlib.contextmanager
def atomic_output(path):
    """Context manager for writing ``path`` atomically: yields a temporary path in the same
    folder (same suffix, ``.nii.gz`` included, for writers that go by it; parent folders are
    created) to write to; on success the temporary file gets the umask's permissions
    (:func:`apply_umask`) and replaces ``path``, on failure it is removed and an existing
    ``path`` is left as it was. For checkpoints, reports, ...::

        with files.atomic_output(out / "model.pt") as tmp:
            torch.save(state, tmp)
    """
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(p.parent, _full_suffix(p))
    try:
        yield tmp
        apply_umask(tmp)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, with the umask's permissions (see
    :func:`atomic_output`). Returns the path."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path).expanduser()


def physical_memory() -> int:
    """The physical memory of this computer in bytes (psutil if installed, else sysconf)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_memory(nbytes: int, what: str) -> None:
    """InputError when ``what`` (e.g. "the volume scan.tif") needs more than half of the
    physical memory (``nbytes`` bytes); the message gives both in GiB."""
    total = physical_memory()
    if nbytes > total / 2:
        raise InputError(f"{what} needs {nbytes / 2**30:.3g} GiB but this computer has "
                         f"{total / 2**30:.3g} GiB of memory (refusing arrays over half of it); "
                         "crop or bin the data first")


def check_file_size(path, needed: int, shape, dtype) -> None:
    """InputError when the file ``path`` holds fewer than ``needed`` bytes, the size its
    header declares for data of ``shape`` and ``dtype`` (a lying header)."""
    p = Path(path)
    size = p.stat().st_size
    if size < needed:
        raise InputError(f"{p.name} is truncated or corrupt: its header declares shape "
                         f"{tuple(shape)} {np.dtype(dtype).name} ({needed / 2**30:.3g} GiB) but "
                         f"the file holds only {size} bytes")


def one_line(exc: BaseException) -> str:
    """A library's error message on one line."""
    return " ".join(str(exc).split())

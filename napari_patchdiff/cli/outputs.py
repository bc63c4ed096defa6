"""Writing a run's results to an output folder that the program owns, all or nothing.

An output folder holds the files of one run of the program and a manifest of them
(``.napari-patchdiff.json``: the files, the command, when, whether the run finished).
:class:`OutputFolder` takes the folder before anything is computed:

- it must be a folder (or not exist yet), writable, and not hold the input;
- it locks the folder (``.napari-patchdiff.lock``, an OS lock that dies with the process), so a
  second run into the same folder is refused at once instead of replacing the first's results;
- it finishes or undoes what an earlier run killed mid-write left (a journal says which), and
  removes that run's temporary folders;
- it must be empty, or hold only the results of earlier runs (the files their manifest lists)
  and ``overwrite``; a file the program did not write is never replaced or removed.

:meth:`OutputFolder.commit` writes a run's files into a temporary folder inside it, then moves
the earlier run's files aside and the new ones in (SIGINT and SIGTERM wait for those few
renames), writes the new manifest, and only then deletes the earlier files. A failure, a
cancel or a kill at any point leaves the earlier results (or, after the renames, the new ones)
complete. A cancelled run's partial results (:meth:`OutputFolder.commit` with
``partial=True``) are added beside the earlier results under ``_partial`` names; they replace
only the partial files of an earlier cancelled run. What goes into the folder, the files of
``reconstruct`` and ``sample``, is written by :mod:`napari_patchdiff.cli.writers`.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable

from .. import __version__
from ..errors import InputError
from ..io import files
# the writers lived here before they had their own module: their old import path
from .writers import write_ensemble, write_reconstruction, write_report

__all__ = ["MANIFEST", "OutputFolder", "write_reconstruction", "write_ensemble",
           "write_report"]

#: the manifest of the files the program wrote into a folder
MANIFEST = ".napari-patchdiff.json"
_LOCK = ".napari-patchdiff.lock"
_JOURNAL = ".napari-patchdiff.journal.json"
_STAGING = ".napari-patchdiff.writing-"
_TRASH = ".napari-patchdiff.old-"
#: temporary folders that versions before the manifest left beside the output folder
_LEGACY = re.compile(r"\.(?P<name>.+)\.(writing|old|check)-[A-Za-z0-9_]{8}$")


def _own(name: str) -> bool:
    """The program's own bookkeeping entries of a folder (not results)."""
    return name.startswith(".napari-patchdiff.")


def _shown(names: Iterable[str], path: Path) -> str:
    names = sorted(names)
    marked = [n + ("/" if (path / n).is_dir() else "") for n in names[:4]]
    return ", ".join(marked) + (", ..." if len(names) > 4 else "")


class OutputFolder:
    """The folder a run writes to: checked and locked on creation, before any computation.

    Use it as a context manager (or call :meth:`close`) to release the lock::

        with OutputFolder("out", overwrite=True, inputs=[truth_path]) as folder:
            result = ...
            folder.commit(lambda d: write_reconstruction(d, problem, result))

    ``inputs``: files or folders the run reads; one inside the folder is refused (an
    ``overwrite`` would otherwise put it at risk).
    """

    def __init__(self, path, overwrite: bool = False, inputs: Iterable = ()):
        self.path = Path(path).expanduser()
        self.overwrite = bool(overwrite)
        self._lock_fd: int | None = None
        self._created = False
        p = self.path
        if p.is_symlink() and not p.exists():
            raise InputError(f"the output folder {p} is a broken symbolic link (to "
                             f"{os.readlink(p)}); choose another folder")
        if p.exists() and not p.is_dir():
            raise InputError(f"the output folder {p} is a file, not a folder; choose a folder")
        here = p.resolve()
        for item in inputs:
            if item is None or not Path(str(item)).expanduser().exists():
                continue
            src = Path(str(item)).expanduser().resolve()
            if src == here or here in src.parents:
                raise InputError(f"the input {item} is inside the output folder {p}; write the "
                                 "results to another folder (the input is never put at risk)")
        if p.is_dir() and not os.stat(p).st_mode & 0o200:
            raise InputError(f"the output folder {p} is read-only; make it writable or choose "
                             "another folder")
        try:
            if not p.is_dir():
                p.mkdir(parents=True)
                self._created = True
            self._lock()
        except OSError as exc:
            self._undo_create()
            raise InputError(f"cannot write to {p}: {exc.strerror or exc}") from None
        try:
            self._recover()
            self._check_contents()
        except BaseException:
            self.close()
            raise

    # -- the lock -------------------------------------------------------------------------
    def _lock(self) -> None:
        lock = self.path / _LOCK
        for _ in range(10):  # another run may remove the lock file between open and lock
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~files.process_umask())
            try:
                if not _try_lock(fd):
                    other = os.read(fd, 64).decode(errors="replace").strip() or "?"
                    raise InputError(f"another napari-patchdiff run (process {other}) is "
                                     f"writing to {self.path}; wait for it to finish or choose "
                                     "another folder")
                if not lock.exists() or os.stat(lock).st_ino != os.fstat(fd).st_ino:
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
            return
        raise InputError(f"cannot lock {lock}: it keeps changing")

    def close(self) -> None:
        """Release the lock (and remove the folder if this run created it and wrote nothing)."""
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            (self.path / _LOCK).unlink()
        os.close(self._lock_fd)  # closing releases the lock
        self._lock_fd = None
        self._undo_create()

    def _undo_create(self) -> None:
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only when empty
            self._created = self.path.is_dir()

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    # -- what the folder holds ------------------------------------------------------------
    def manifest(self) -> dict:
        """The manifest of the results in the folder (empty when there are none)."""
        m = self.path / MANIFEST
        if not m.is_file():
            return {}
        try:
            data = json.loads(m.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and isinstance(data.get("files"), list) else {}

    def _check_contents(self) -> None:
        entries = {q.name for q in self.path.iterdir() if not _own(q.name)}
        if not entries:
            return
        ours = set(self.manifest().get("files", []))
        foreign = entries - ours
        if foreign:
            raise InputError(
                f"the output folder {self.path} holds files this program did not write "
                f"({_shown(foreign, self.path)}); choose another folder (overwrite=True replaces "
                "only the results of an earlier run, never other files)")
        if not self.overwrite:
            raise InputError(f"the output folder {self.path} holds the results of an earlier "
                             f"run ({_shown(entries, self.path)}); pass overwrite=True to replace "
                             "them, or choose another folder")

    def _recover(self) -> None:
        """Finish or undo a commit that was killed half-way, and remove temporary folders."""
        journal = self.path / _JOURNAL
        if journal.is_file():
            try:
                j = json.loads(journal.read_text())
            except (OSError, ValueError):
                j = None
            if isinstance(j, dict) and self.manifest().get("run") != j.get("run"):
                _roll_back(self.path, j)
            journal.unlink()
        for q in self.path.iterdir():
            if q.is_dir() and (q.name.startswith(_STAGING) or q.name.startswith(_TRASH)):
                shutil.rmtree(q, ignore_errors=True)
        here = self.path.resolve()
        with contextlib.suppress(OSError):
            for q in here.parent.iterdir():
                m = _LEGACY.match(q.name)
                if m and m["name"] == here.name and q.is_dir():
                    shutil.rmtree(q, ignore_errors=True)

    # -- writing --------------------------------------------------------------------------
    def commit(self, write: Callable[[Path], object], partial: bool = False) -> Path:
        """Call ``write(folder)`` on a new temporary folder inside :attr:`path`, then move its
        files into :attr:`path`: they replace the files of the earlier run (all of them; with
        ``partial`` only the earlier partial files of the same names, the earlier complete
        results stay). A failure or a cancel before the files are in place leaves the folder
        as it was."""
        if self._lock_fd is None:
            raise RuntimeError("OutputFolder.commit after close()")
        staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=self.path))
        trash = None
        try:
            write(staging)
            new = sorted(q.name for q in staging.iterdir())
            for q in staging.iterdir():
                files.apply_umask(q, directory=q.is_dir())
            before = self.manifest()
            earlier = [n for n in before.get("files", []) if (self.path / n).exists()
                       or (self.path / n).is_symlink()]
            replaced = [n for n in earlier if n in new] if partial else earlier
            kept = [n for n in earlier if n not in replaced]
            run = f"{datetime.datetime.now().isoformat(timespec='seconds')}-{os.getpid()}-" \
                  f"{Path(staging).name[-8:]}"
            manifest = {
                "program": "napari-patchdiff", "version": __version__, "run": run,
                "files": sorted(set(kept) | set(new)),
                "runs": [r for r in before.get("runs", []) if set(r.get("files", [])) & set(kept)]
                + [{"run": run, "command": _command(), "finished": not partial,
                    "files": new}],
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            files.apply_umask(staging / MANIFEST)
            trash = Path(tempfile.mkdtemp(prefix=_TRASH, dir=self.path))
            journal = {"run": run, "staging": staging.name, "trash": trash.name,
                       "old": replaced, "new": new}
            with _signals_deferred():
                files.atomic_write_text(self.path / _JOURNAL, json.dumps(journal))
                try:
                    for n in replaced:
                        os.replace(self.path / n, trash / n)
                    for n in new:
                        _move_in(staging / n, self.path / n)
                    os.replace(staging / MANIFEST, self.path / MANIFEST)  # the commit point
                except BaseException:
                    _roll_back(self.path, journal)
                    raise
                finally:
                    (self.path / _JOURNAL).unlink(missing_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        return self.path


def _command() -> str:
    return " ".join(["napari-patchdiff", *sys.argv[1:]]) if sys.argv else ""


def _remove(path: Path) -> None:
    """Remove the file, link or folder ``path`` (a link itself, never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _move_in(src: Path, dst: Path) -> None:
    """``os.replace`` that also replaces a folder of the same name (rename cannot)."""
    if dst.is_dir() and not dst.is_symlink():
        _remove(dst)
    os.replace(src, dst)


def _roll_back(folder: Path, journal: dict) -> None:
    """Undo the renames of a commit that did not reach its commit point (see
    :meth:`OutputFolder.commit`): new files that were moved in go, earlier ones come back."""
    staging, trash = folder / journal["staging"], folder / journal["trash"]
    for n in journal.get("new", []):
        if not (staging / n).exists() and ((folder / n).exists() or (folder / n).is_symlink()):
            _remove(folder / n)
    for n in journal.get("old", []):
        if (trash / n).exists() or (trash / n).is_symlink():
            _move_in(trash / n, folder / n)


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on the open file ``fd`` without waiting; False if held."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT and SIGTERM wait until the block is done (in the main thread, where Python's
    handlers run; elsewhere there is nothing to defer)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
            signal, "pthread_sigmask"):
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)

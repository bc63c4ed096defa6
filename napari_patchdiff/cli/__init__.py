"""The ``napari-patchdiff`` command line: a thin layer over :mod:`napari_patchdiff.api`.

Subcommands: ``reconstruct`` (simulate a measurement from a ground truth, or read a measured
one, and reconstruct it), ``sample`` (a posterior ensemble with uncertainty maps), ``train`` and
``info`` (diffusion priors), ``calibrate`` (a sampler's intervals on held-out images) and
``demo`` (the README's main job on the shipped sample data). Each is a module of this package
holding its parser and its ``cmd_*``; :mod:`.parser` assembles them, :mod:`._options` holds
the option groups they share and :mod:`._common` what they share while they run;
:mod:`.outputs` owns the output folders and :mod:`.writers` writes the result files into them.
Exit codes: 0 success, 2 bad input (a clear message on stderr), 1 unexpected failure,
130 cancelled (Ctrl-C).
"""
from __future__ import annotations

import contextlib
import sys
import warnings

import torch

from .. import api, io
from ..errors import InputError, InputWarning
from ..events import Cancelled
from ._common import _OPEN_FOLDERS, _Progress, in_cli_words
from .calibrate import cmd_calibrate
from .demo import cmd_demo
from .info import cmd_info
from .parser import build_parser
from .reconstruct import cmd_reconstruct
from .sample import cmd_sample
from .train import cmd_train
from .writers import write_reconstruction

__all__ = ["Terminated", "build_parser", "cmd_calibrate", "cmd_demo", "cmd_info",
           "cmd_reconstruct", "cmd_sample", "cmd_train", "main",
           # the names of the module before it became a package that code and tests use
           "api", "io", "write_reconstruction", "_Progress"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops at its next step and keeps what it did."""


def _terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import signal
    import threading

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return _run(args)
    finally:
        while _OPEN_FOLDERS:
            _OPEN_FOLDERS.pop().close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _notes():
    """Each :class:`~napari_patchdiff.errors.InputWarning` of the core (an explicit modality
    over the sidecar's, ...) as one ``napari-patchdiff: note:`` line on stderr, every time;
    other warnings as Python shows them. Restored afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", InputWarning)
        show = warnings.showwarning

        def note(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, InputWarning):
                print(f"napari-patchdiff: note: {in_cli_words(str(message))}", file=sys.stderr,
                      flush=True)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = note
        yield


def _run(args) -> int:
    try:
        with _notes():
            return args.func(args)
    except InputError as exc:  # the core's message, naming this command's flags
        print(f"napari-patchdiff: error: {in_cli_words(str(exc))}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt) as exc:
        print("\nnapari-patchdiff: cancelled", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except torch.cuda.OutOfMemoryError as exc:
        print(f"napari-patchdiff: error: out of GPU memory ({exc}); use fewer slices, "
              f"--slice, or --device cpu", file=sys.stderr)
        return 1
    except MemoryError:
        print("napari-patchdiff: error: out of memory: crop or bin the image, or reconstruct "
              "fewer slices of a volume (--slice)", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of our output went away (`| head`): nothing is wrong
        sys.stderr.close()
        return 0
    except OSError as exc:  # a full disk, a file removed under us: the earlier results are kept
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"napari-patchdiff: error: {exc.strerror or exc}{where}; the output folder was "
              f"left as it was", file=sys.stderr)
        return 1

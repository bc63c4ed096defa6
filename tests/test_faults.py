"""Fault injection on output folders (issue 30): whatever happens to a run (SIGINT, SIGTERM or
SIGKILL while it computes, writes or moves its files into place; a second run into the same
folder; a full disk; a read-only or symlinked folder), the results of the earlier run and any
file the program did not write are as they were, and no temporary file is left that a later
run does not remove.

Signals are real: the run is a child process (``_child`` below drives ``cli.main`` and, for
the kill-while-writing cases, kills itself with SIGKILL at the named point)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tifffile

from napari_patchdiff.cli import main
from napari_patchdiff.cli.outputs import MANIFEST, OutputFolder

#: a child process: ``python -c CHILD MODE MARKER ARGS...`` runs the CLI with ARGS; MODE
#: "signal" touches MARKER at the first step (the parent then signals it), "kill-write"
#: SIGKILLs itself after the first result file is written, "kill-swap" after the first file
#: is moved into the output folder
CHILD = r"""
import os, signal, sys
# Ctrl-C as a terminal delivers it, even where the suite itself runs with SIGINT ignored (a
# background job of a non-interactive shell, whose children inherit the ignored SIGINT: Python
# then installs no KeyboardInterrupt handler and the signal tests wait out their timeout)
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
from napari_patchdiff import cli, io
from napari_patchdiff.cli import outputs
mode, marker, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
if mode == "signal":
    real = cli._Progress.__call__
    def progress(self, ev, *a, **k):
        if not marker.exists():
            marker.write_text("started")
        return real(self, ev, *a, **k)
    cli._Progress.__call__ = progress
elif mode == "kill-write":
    real_tiff = io.write_tiff
    def write_tiff(*a, **k):
        out = real_tiff(*a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
    io.write_tiff = write_tiff
elif mode == "kill-swap":
    real_move = outputs._move_in
    def move_in(*a, **k):
        real_move(*a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
    outputs._move_in = move_in
sys.exit(cli.main(argv))
"""


def _args(crop, out, *extra, method="initial"):
    return ["reconstruct", str(crop), "--operator", "denoise", "--noise", "0.05", "--method",
            method, "--out", str(out), "--quiet", *map(str, extra)]


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _results(folder: Path) -> dict:
    """The files of ``_snapshot`` less the program's bookkeeping (manifest, lock)."""
    return {k: v for k, v in _snapshot(folder).items() if not k.startswith(".napari-patchdiff")}


def _child(mode, marker, argv, **kw):
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, str(marker), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _earlier_run(crop, out) -> dict:
    assert main(_args(crop, out)) == 0
    return _results(out)


def _no_leftovers(folder: Path) -> None:
    hidden = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert hidden == [MANIFEST], hidden
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


# -- files the program did not write --------------------------------------------------------
def test_overwrite_never_touches_files_the_program_did_not_write(crop, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "photos").mkdir()
    (out / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    before = _snapshot(out)
    assert main(_args(crop, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "did not write" in err and "notes.txt" in err and "photos/" in err
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == [
        "notes.txt", "photos"]


def test_a_file_added_beside_earlier_results_is_kept_and_refused(crop, tmp_path, capsys):
    out = tmp_path / "out"
    earlier = _earlier_run(crop, out)
    (out / "mine.txt").write_text("a file of the user's")
    assert main(_args(crop, out, "--overwrite")) == 2
    assert "mine.txt" in capsys.readouterr().err
    assert _results(out) == {**earlier, "mine.txt": b"a file of the user's"}


def test_the_input_inside_the_output_folder_is_refused(crop, tmp_path, capsys):
    out = tmp_path / "out"
    _earlier_run(crop, out)
    before = _snapshot(out)
    code = main(["reconstruct", "--measurement", str(out / "measurement.tif"), "--method",
                 "initial", "--out", str(out), "--overwrite", "--quiet"])
    assert code == 2 and "inside --out" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_overwrite_replaces_only_the_earlier_run(crop, tmp_path):
    out = tmp_path / "out"
    earlier = _earlier_run(crop, out)
    assert main(_args(crop, out, "--overwrite", "--noise", "0.2")) == 0
    assert _results(out)["recon.tif"] != earlier["recon.tif"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        manifest["files"] == ["measurement.json", "measurement.tif", "recon.json", "recon.tif",
                              "report.json"]
    _no_leftovers(out)


# -- signals while computing ----------------------------------------------------------------
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_computing_keeps_the_earlier_results(crop, tmp_path, sig, code):
    out = tmp_path / "out"
    earlier = _earlier_run(crop, out)
    marker = tmp_path / "started"
    argv = _args(crop, out, "--overwrite", "--iterations", 100000, method="admm-tv")
    argv.remove("--quiet")  # the progress bar is what touches the marker
    child = _child("signal", marker, argv)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), child.communicate()
    time.sleep(0.5)
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    assert child.returncode == code, err
    after = _results(out)
    assert {k: after[k] for k in earlier} == earlier  # the complete earlier run, unchanged
    assert {"recon_partial.tif", "report_partial.json", "measurement_partial.tif"} <= set(after)
    assert json.loads((out / "report_partial.json").read_text())["cancelled"] is True
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["files"]) == set(after)
    _no_leftovers(out)
    # the next --overwrite run replaces both the complete and the partial files
    assert main(_args(crop, out, "--overwrite")) == 0
    assert not [p for p in out.iterdir() if "_partial" in p.name]


# -- SIGKILL while writing or moving into place ---------------------------------------------
@pytest.mark.parametrize("mode", ["kill-write", "kill-swap"])
def test_sigkill_while_writing_keeps_the_earlier_results(crop, tmp_path, mode, capsys):
    out = tmp_path / "out"
    earlier = _earlier_run(crop, out)
    child = _child(mode, tmp_path / "unused", _args(crop, out, "--overwrite", "--noise", 0.3))
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    assert any(p.name.startswith(".napari-patchdiff.") and p.name != MANIFEST
               for p in out.iterdir())  # the kill left its temporary files ...
    if mode == "kill-write":
        assert _results(out) == earlier  # ... and nothing of it among the results
    # the next run (even one that is refused) finishes or undoes the killed one's work
    assert main(_args(crop, out)) == 2
    assert "earlier run" in capsys.readouterr().err
    assert _results(out) == earlier
    _no_leftovers(out)


def test_legacy_temporary_folders_beside_the_folder_are_removed(crop, tmp_path):
    out = tmp_path / "out"
    _earlier_run(crop, out)
    for name in (".out.writing-abcd1234", ".out.old-x_y9zz00"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "recon.tif").write_bytes(b"0")
    (tmp_path / ".other.writing-abcd1234").mkdir()  # another folder's: not ours to remove
    assert main(_args(crop, out, "--overwrite")) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
        ".other.writing-abcd1234"]


# -- two runs at once -------------------------------------------------------------------------
def test_a_second_run_into_the_same_folder_is_refused(crop, tmp_path, capsys):
    out = tmp_path / "new"
    with OutputFolder(out):  # a run that is still computing holds the folder
        assert main(_args(crop, out)) == 2
        assert "another napari-patchdiff run" in capsys.readouterr().err
        assert main(_args(crop, out, "--overwrite")) == 2
    assert main(_args(crop, out)) == 0  # free again once the first run ended


def test_two_processes_into_one_new_folder(crop, tmp_path):
    out = tmp_path / "new"
    marker = tmp_path / "started"
    argv = _args(crop, out, "--iterations", 100000, method="admm-tv")
    argv.remove("--quiet")
    first = _child("signal", marker, argv)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = _child("none", tmp_path / "unused", _args(crop, out))
    _, err = second.communicate(timeout=120)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    assert second.returncode == 2 and "another napari-patchdiff run" in err, err
    assert first.returncode == 130


# -- full disk, read-only and symlinked folders -----------------------------------------------
def test_a_full_disk_while_writing_keeps_the_earlier_results(crop, tmp_path, capsys,
                                                               monkeypatch):
    import napari_patchdiff.cli as cli

    out = tmp_path / "out"
    earlier = _earlier_run(crop, out)
    real = cli.write_reconstruction

    def full_disk(folder, *args, **kwargs):
        real(folder, *args, **kwargs)
        raise OSError(28, "No space left on device", str(folder / "report.json"))

    monkeypatch.setattr(cli.reconstruct, "write_reconstruction", full_disk)  # where it is looked up
    assert main(_args(crop, out, "--overwrite", "--noise", "0.2")) == 1
    err = capsys.readouterr().err
    assert "No space left" in err and "Traceback" not in err
    assert _results(out) == earlier
    _no_leftovers(out)


def test_a_read_only_folder_is_refused_and_left_read_only(crop, tmp_path, capsys):
    out = tmp_path / "out"
    earlier = _earlier_run(crop, out)
    out.chmod(0o555)
    try:
        assert main(_args(crop, out, "--overwrite")) == 2
        assert "read-only" in capsys.readouterr().err
        assert (out.stat().st_mode & 0o777) == 0o555 and _results(out) == earlier
    finally:
        out.chmod(0o755)


def test_a_symlinked_folder_stays_a_link(crop, tmp_path):
    target = tmp_path / "target"
    _earlier_run(crop, target)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    assert main(_args(crop, link, "--overwrite", "--noise", "0.2")) == 0
    assert link.is_symlink() and (target / "recon.tif").is_file()
    _no_leftovers(target)


def test_the_current_folder_as_output(crop, tmp_path, monkeypatch):
    out = tmp_path / "here"
    _earlier_run(crop, out)
    monkeypatch.chdir(out)
    assert main(_args(crop, ".", "--overwrite")) == 0
    assert tifffile.imread(out / "recon.tif").shape == (64, 64)
    _no_leftovers(out)

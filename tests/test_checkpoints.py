"""Hardening of checkpoints and training: weights load only from safetensors unless a ``.pt``
file is named explicitly (and then never runs pickled code), files honour the umask, and an
interrupted training run keeps its last completed step."""
from __future__ import annotations

import os
import signal
import stat
import sys
import threading

import numpy as np
import pytest
import torch

from napari_patchdiff.errors import InputError
from napari_patchdiff.events import Cancelled
from napari_patchdiff.priors import (EDMDenoiser, build_unet, load_checkpoint, load_prior,
                                     read_metadata, save_checkpoint)
from napari_patchdiff.priors import checkpoint as ckpt_mod
from napari_patchdiff.priors import prior as prior_mod
from napari_patchdiff.training import TrainConfig, train
from napari_patchdiff.training import loop as loop_mod


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal, also when the tests run as a
    background job (a shell starts those with SIGINT ignored, and Python then keeps it so)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _meta(**kw):
    meta = dict(kind="patch", architecture=dict(build_unet("tiny").config), pad=8,
                image_size=[32, 32], canvas_size=[48, 48], modality="ct",
                coordinates={"name": "canvas-linear-v1"}, patch_sizes=[16, 32],
                inference_patch_size=16, intensity={"normalisation": "HU"})
    meta.update(kw)
    return meta


def _pt_checkpoint(tmp_path, name="old"):
    """``name.pt`` (plain tensors) + ``name.json``, no ``name.safetensors``; returns the model."""
    torch.manual_seed(0)
    den = EDMDenoiser(build_unet("tiny"))
    save_checkpoint(tmp_path / name, den, _meta())
    (tmp_path / f"{name}.safetensors").unlink()
    torch.save(den.state_dict(), tmp_path / f"{name}.pt")
    return den


class _Payload:
    """Unpickling this calls ``os.mkdir(target)``: the side effect a malicious file would have."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


# ------------------------------------------------------------------------------- loading

def test_pt_next_to_a_missing_safetensors_is_not_loaded(tmp_path):
    """Regression: ``x`` / ``x.safetensors`` quietly fell back to ``x.pt`` (torch.load)."""
    _pt_checkpoint(tmp_path)
    for name in ("old", "old.safetensors", "old.json"):
        with pytest.raises(InputError, match=r"not found.*old\.pt.*explicitly") as exc:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(exc.value)
        with pytest.raises(InputError, match="not found"):
            read_metadata(tmp_path / name)
        with pytest.raises(InputError, match="not found"):
            load_prior(tmp_path / name)


def test_explicit_pt_with_plain_tensors_loads(tmp_path):
    den = _pt_checkpoint(tmp_path)
    den2, meta = load_checkpoint(tmp_path / "old.pt")
    for k, v in den.state_dict().items():
        assert torch.equal(v, den2.state_dict()[k]), k
    assert meta["modality"] == "ct" and read_metadata(tmp_path / "old.pt")["pad"] == 8
    pr = load_prior(tmp_path / "old.pt")
    assert pr.metadata["source"].endswith("old.pt")


def test_explicit_pt_is_refused_before_torch_2_6(tmp_path, monkeypatch):
    """torch < 2.6's ``weights_only=True`` loader could still be made to run code."""
    _pt_checkpoint(tmp_path)
    monkeypatch.setattr(ckpt_mod.torch, "__version__", "2.5.1+cpu")
    for fn in (load_checkpoint, read_metadata, load_prior):
        with pytest.raises(InputError, match=r"torch >= 2\.6.*convert it to safetensors"):
            fn(tmp_path / "old.pt")


def test_malicious_pickle_is_never_executed(tmp_path):
    den = EDMDenoiser(build_unet("tiny"))
    save_checkpoint(tmp_path / "evil", den, _meta())
    (tmp_path / "evil.safetensors").unlink()
    marker = tmp_path / "pwned"
    state = dict(den.state_dict(), payload=_Payload(marker))
    torch.save(state, tmp_path / "evil.pt")
    for name in ("evil", "evil.safetensors", "evil.pt"):
        with pytest.raises(InputError) as exc:
            load_checkpoint(tmp_path / name)
        msg = str(exc.value)
        assert not marker.exists(), f"{name}: the pickled payload ran"
        assert "weights_only" not in msg and "\n" not in msg, msg
        # torch's exception (and its advice) is not chained onto ours either
        assert exc.value.__cause__ is None
        assert exc.value.__context__ is None or exc.value.__suppress_context__
    assert "convert it to safetensors" in msg and "evil.pt" in msg
    with pytest.raises(InputError):
        load_prior(tmp_path / "evil.pt")
    assert not marker.exists()
    # the payload is live: unrestricted unpickling (what the loader must never do) runs it
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.is_dir()


def test_shipped_priors_are_safetensors_only(tmp_path, monkeypatch):
    """A shipped name never selects a ``.pt`` file (``ct.pt`` sorts before ``ct.safetensors``)."""
    den = EDMDenoiser(build_unet("tiny"))
    save_checkpoint(tmp_path / "demo", den, _meta())
    torch.save(den.state_dict(), tmp_path / "demo.pt")
    torch.save(den.state_dict(), tmp_path / "legacy.pt")
    monkeypatch.setattr(prior_mod, "SHIPPED_DIR", tmp_path)
    shipped = prior_mod.shipped_priors()
    assert list(shipped) == ["demo"] and shipped["demo"].name == "demo.safetensors"
    assert load_prior("demo").metadata["source"].endswith("demo.safetensors")
    with pytest.raises(InputError):
        load_prior("legacy")


# ------------------------------------------------------------------------------- permissions

@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_files_honour_the_umask(tmp_path, umask, mode):
    den = EDMDenoiser(build_unet("tiny"))
    opt = torch.optim.Adam(den.parameters())
    # a stale temporary file left by an interrupted save (it must not lend its mode)
    stale = tmp_path / "ck.safetensors.tmp"
    stale.write_bytes(b"")
    stale.chmod(0o600)
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "ck", den, _meta())
        ckpt_mod.save_training_state(tmp_path / "ck", den, opt, {"step": 0})
    finally:
        os.umask(old)
    for name in ("ck.safetensors", "ck.json", "ck.state.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    leftovers = {p.name for p in tmp_path.iterdir()} - {"ck.safetensors", "ck.json",
                                                        "ck.state.safetensors", stale.name}
    assert not leftovers


# ------------------------------------------------------------------------------- interruption

def _squares(n=6, size=32):
    vol = np.zeros((n, size, size), np.float32)
    for i in range(n):
        a = 6 + i % 3
        vol[i, a:size - a, a:size - a] = 0.4 + 0.1 * (i % 4)
    return vol


VOL = [("squares", _squares())]
RUN = dict(modality="unit", network="tiny", patch_sizes=(16, 32), patch_probs=(0.5, 0.5),
           batch=4, pad=8, inference_patch_size=16, lr=1e-3, val_fraction=0.2, val_patches=8,
           steps=6, seed=5, log_every=1, val_every=2, save_every=0)


def _interrupt(monkeypatch, name, at):
    """Make ``loop.<name>`` raise KeyboardInterrupt when called for step ``at``."""
    real = getattr(loop_mod, name)

    def fake(*args):
        if args[-1] == at:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(loop_mod, name, fake)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "full"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests (a module fixture runs before _one_thread)
    try:
        list(train(VOL, out, TrainConfig(**RUN)))
    finally:
        torch.set_num_threads(n)
    return load_checkpoint(out)[0]


@pytest.mark.parametrize("where", ["optimisation_step", "draw_batch"])
def test_interrupt_saves_the_last_completed_step(tmp_path, monkeypatch, uninterrupted, where):
    out = tmp_path / "p"
    _interrupt(monkeypatch, where, 3)
    seen = []
    with pytest.raises(Cancelled) as exc:
        for ev in train(VOL, out, TrainConfig(**RUN)):
            seen.append(ev.step)
    assert seen == [1, 2]
    assert str(exc.value) == (f"training interrupted at step 2; checkpoint saved to "
                              f"{out}.safetensors (resume with resume=True)")
    assert isinstance(exc.value.__cause__, KeyboardInterrupt)
    assert read_metadata(out)["steps"] == 2
    monkeypatch.undo()
    rest = list(train(VOL, out, TrainConfig(**dict(RUN, resume=True))))
    assert [e.step for e in rest] == [3, 4, 5, 6]
    _assert_same_weights(load_checkpoint(out)[0], uninterrupted)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals reach the main thread only")
def test_ctrl_c_during_the_update_finishes_that_step(tmp_path, monkeypatch, uninterrupted):
    """A real SIGINT while Adam updates the weights of step 3: the step completes (the EMA and
    the counters with it), then the run stops with step 3 saved."""
    out = tmp_path / "p"
    real, calls = torch.optim.Adam.step, []

    def step(self, *args, **kw):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return real(self, *args, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(Cancelled, match=r"interrupted at step 3; checkpoint saved"):
        list(train(VOL, out, TrainConfig(**RUN)))
    assert len(calls) == 3 and read_metadata(out)["steps"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    list(train(VOL, out, TrainConfig(**dict(RUN, resume=True))))
    _assert_same_weights(load_checkpoint(out)[0], uninterrupted)


def test_interrupt_inside_a_half_done_update_saves_nothing(tmp_path, monkeypatch):
    """A KeyboardInterrupt raised (not signalled) in the middle of the weight update leaves the
    weights half-updated: that state is not saved as if it were a completed step."""
    real, calls = torch.optim.Adam.step, []

    def step(self, *args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(Cancelled, match=r"during step 3.*no checkpoint saved"):
        list(train(VOL, tmp_path / "p", TrainConfig(**RUN)))
    assert not (tmp_path / "p.safetensors").exists()


def test_resume_refuses_a_checkpoint_and_state_of_different_steps(tmp_path):
    """A save interrupted between the checkpoint and its training state must not resume with
    the EMA weights of one step and the optimiser of another."""
    out = tmp_path / "p"
    list(train(VOL, out, TrainConfig(**dict(RUN, steps=2))))
    model, meta = load_checkpoint(out)
    save_checkpoint(out, model, dict(meta, steps=1))
    with pytest.raises(InputError, match=r"training state is at step 2.*step 1"):
        list(train(VOL, out, TrainConfig(**dict(RUN, resume=True))))


# ------------------------------------------------------------------------------- CLI

def _cli_train(tmp_path, *extra):
    vol = tmp_path / "sq.npy"
    np.save(vol, _squares())
    return ["train", str(vol), "--out", str(tmp_path / "p"), "--modality", "unit",
            "--network", "tiny", "--patch-sizes", "16", "--patch-probs", "1", "--batch", "2",
            "--pad", "8", "--steps", "5", "--save-every", "0", "--val-every", "0", *extra]


def test_cli_train_interrupted_exits_130_naming_the_kept_step(tmp_path, capsys, monkeypatch):
    from napari_patchdiff.cli import main

    _interrupt(monkeypatch, "optimisation_step", 3)
    code = main(_cli_train(tmp_path))
    err = capsys.readouterr().err
    assert code == 130, err
    line = (f"training interrupted at step 2; checkpoint saved to {tmp_path / 'p'}.safetensors "
            "(resume with --resume)")
    assert any(ln.endswith(line) for ln in err.splitlines()), err
    assert read_metadata(tmp_path / "p")["steps"] == 2
    monkeypatch.undo()
    code = main(_cli_train(tmp_path, "--resume"))
    err = capsys.readouterr().err
    assert code == 0 and "5/5" in err and "2/5" not in err, err


class _InterruptingStderr:
    """sys.stderr whose first write of the progress bar at step 2 raises KeyboardInterrupt
    (Ctrl-C while the CLI draws its progress bar, outside the training loop)."""

    def __init__(self, real):
        self.real, self.fired = real, False

    def write(self, text):
        if " 2/5 " in text and not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return self.real.write(text)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_cli_ctrl_c_while_printing_progress_still_saves(tmp_path, capsys, monkeypatch):
    from napari_patchdiff.cli import main

    argv = _cli_train(tmp_path, "--val-every", "2")  # an event (a progress line) at step 2
    monkeypatch.setattr(sys, "stderr", _InterruptingStderr(sys.stderr))
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 130, err
    assert f"training interrupted at step 2; checkpoint saved to {tmp_path / 'p'}" in err, err
    assert read_metadata(tmp_path / "p")["steps"] == 2
    assert sys.stderr.fired and " 3/5 " not in err

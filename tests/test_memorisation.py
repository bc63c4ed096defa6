"""The memorisation monitor: training a tiny network on one CT slice for long must raise the
gap; the shipped prior, which generalises, stays below the onset threshold; the early stop keeps
the weights of the last validation before the onset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_patchdiff.conventions import normalise
from napari_patchdiff.errors import InputError
from napari_patchdiff.priors import load_prior
from napari_patchdiff.priors.checkpoint import load_checkpoint, read_metadata
from napari_patchdiff.training import TrainConfig, train
from napari_patchdiff.training.memorisation import MemorisationMonitor, OnsetRule, icr

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "ct_lung.tif"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _ct(slices, size):
    """Sample CT slices averaged down to ``size`` x ``size``, on the normalised scale."""
    x, _ = normalise(tifffile.imread(SAMPLE)[slices].astype(np.float32), "ct")
    f = x.shape[-1] // size
    return x.reshape(len(slices), size, f, size, f).mean((2, 4)).astype(np.float32)


#: a tiny network memorising one 16 x 16 slice (no held-out slice: one-slice training)
ONE_SLICE = dict(modality="unit", network="tiny", patch_sizes=(16,), patch_probs=(1.0,),
                 batch=16, pad=8, inference_patch_size=16, lr=3e-3, val_fraction=0.0,
                 val_every=50, save_every=0, log_every=50, seed=0)


@pytest.fixture(scope="module")
def one_slice_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mem") / "one"
    events = list(train([("one", _ct([8], 16))], out, TrainConfig(steps=300, **ONE_SLICE)))
    return out, events


def test_training_on_one_slice_for_long_raises_the_gap(one_slice_run):
    out, events = one_slice_run
    gaps = [ev.memorisation["gap"] for ev in events if ev.memorisation is not None]
    assert len(gaps) == 6
    assert gaps[0] < 2.0  # not yet memorised: a rotated training patch is denoised about as well
    assert gaps[-1] > 3.0 and gaps[-1] > 2 * gaps[0]
    assert gaps[-1] == max(gaps)
    meta = read_metadata(out)
    history = meta["memorisation_history"]
    assert [h[0] for h in history] == list(range(50, 301, 50))
    assert [h[1]["gap"] for h in history] == pytest.approx(gaps)
    assert all(np.isfinite(h[1]["icr"]) for h in history)
    assert "rotated" in meta["memorisation"]
    assert "early_stop" not in meta


def test_a_prior_that_generalises_stays_below_the_threshold():
    prior = load_prior("ct")
    images = torch.from_numpy(normalise(tifffile.imread(SAMPLE)[[2, 9]].astype(np.float32),
                                        "ct")[0])[:, None]
    mon = MemorisationMonitor(images, "patch", prior.metadata["inference_patch_size"],
                              prior.metadata["pad"], 0, "cpu", n=16)
    gap = mon(prior.denoiser)["gap"]
    assert 0.8 < gap < TrainConfig().memorisation_threshold


def test_early_stop_keeps_the_weights_before_the_onset(tmp_path, one_slice_run):
    _, full = one_slice_run
    gaps = {ev.step: ev.memorisation["gap"] for ev in full if ev.memorisation is not None}
    out = tmp_path / "stopped"
    events = list(train([("one", _ct([8], 16))], out,
                        TrainConfig(steps=300, stop_on_memorisation=True, **ONE_SLICE)))
    last = events[-1]
    assert last.done and last.early_stop is not None
    stop = last.early_stop
    # the same run as without the option up to the onset: the rule read the same gaps
    above = [s for s in sorted(gaps) if gaps[s] > 2.0]
    assert stop["onset_step"] == above[1] == last.step < 300
    assert stop["kept_step"] == max(s for s in gaps if s < above[0])
    meta = read_metadata(out)
    assert meta["steps"] == stop["kept_step"] and meta["early_stop"]["onset_step"] == last.step
    assert not Path(str(out) + ".state.safetensors").exists()
    # the kept weights are those of the kept step: a run that ends there has the same EMA
    ref = tmp_path / "ref"
    list(train([("one", _ct([8], 16))], ref,
               TrainConfig(steps=stop["kept_step"], **ONE_SLICE)))
    a, _ = load_checkpoint(out)
    b, _ = load_checkpoint(ref)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_onset_rule_and_options():
    rule = OnsetRule(threshold=2.0, patience=2)
    assert [rule.update(s, g) for s, g in [(1, 1.1), (2, 1.5), (3, 2.5), (4, 1.9), (5, 2.2),
                                           (6, 3.0), (7, 4.0)]] == [False] * 5 + [True, False]
    assert rule.last_good == 4 and rule.onset_step == 6
    with pytest.raises(InputError, match="memorisation_threshold"):
        TrainConfig(memorisation_threshold=1.0)
    with pytest.raises(InputError, match="needs the monitor"):
        TrainConfig(stop_on_memorisation=True, memorisation_probes=0)


def test_icr_estimator():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(40, 1, 6, generator=g)
    quiet = s + 0.01 * torch.randn(40, 4, 6, generator=g)
    noisy = s + 1.0 * torch.randn(40, 4, 6, generator=g)
    assert icr(quiet) < 0.01 < icr(noisy)  # residual energy per unit of invariant signal
    with pytest.raises(ValueError):
        icr(torch.zeros(1, 4, 6))

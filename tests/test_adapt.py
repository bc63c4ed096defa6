"""Test-time adaptation: low-rank adapters, the self-supervised loss and its guards, saving the
adapted prior, and the option in the API, the CLI and the GUI's job."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_patchdiff import api
from napari_patchdiff.adapt import ADAPTATION, AdaptingPrior, adapt_prior
from napari_patchdiff.cli import main
from napari_patchdiff.errors import InputError
from napari_patchdiff.priors import load_prior, read_metadata
from napari_patchdiff.priors.lora import LoRAConv2d, add_lora, lora_parameters, merge_lora
from napari_patchdiff.samples import load_sample


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny CT patch prior for 64 x 64 slices (a few steps) and a 4-slice 64 x 64 CT crop."""
    from napari_patchdiff.conventions import hu_to_unit
    from napari_patchdiff.training import TrainConfig, TrainingVolume, train

    hu = load_sample("ct")[0][:4, 96:160, 96:160].astype(np.float32)
    out = tmp_path_factory.mktemp("prior") / "tiny"
    config = TrainConfig(modality="ct", network="tiny", patch_sizes=(16,), patch_probs=(1.0,),
                         batch=2, pad=8, inference_patch_size=16, steps=3, val_fraction=0)
    for _ in train([TrainingVolume(hu_to_unit(hu), "crop")], out, config):
        pass
    return load_prior(out), api.truth_from_array(hu, {"modality": "ct"}), out


def test_lora_starts_as_the_identity_and_merges_exactly():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(8, 4, 3, padding=1, stride=2))
    x = torch.randn(2, 3, 16, 16)
    adapted = add_lora(net, rank=2)
    assert sum(isinstance(m, LoRAConv2d) for m in adapted.modules()) == 2
    torch.testing.assert_close(adapted(x), net(x))  # B = 0 at the start
    params = lora_parameters(adapted)
    trainable = {id(p) for p in params}
    assert all(not p.requires_grad for p in adapted.parameters() if id(p) not in trainable)
    assert all(p.requires_grad for p in params)
    assert len(params) == 4 and sum(p.numel() for p in params) < sum(
        p.numel() for p in net.parameters())
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn_like(p))
    assert not torch.allclose(adapted(x), net(x))
    torch.testing.assert_close(merge_lora(adapted)(x), adapted(x), rtol=1e-5, atol=1e-5)


def test_adaptation_lowers_the_data_loss_and_keeps_its_history(tiny):
    prior, truth, _ = tiny
    problem = api.simulate(truth, "ct-parallel", views=10, noise_std=0.0)
    params = ADAPTATION.resolve(problem.op, 0.0, steps=3, lr=3e-3)
    adapting = AdaptingPrior(prior, problem.op, problem.y, 0.0, **params)
    x = problem.truth_batch + 0.2 * torch.randn(problem.truth_batch.shape,
                                                generator=torch.Generator().manual_seed(1))
    for _ in range(4):
        adapting.denoise(x, 0.2)
    losses = [h[1] for h in adapting.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert adapting.evaluations == 12 and adapting.stopped is None
    assert adapting.nfe == 4 and adapting.held_out.float().mean() < 0.2
    # the base prior is untouched
    assert all(not isinstance(m, LoRAConv2d) for m in prior.denoiser.modules())


def test_adaptation_stops_at_the_noise_level(tiny):
    prior, truth, _ = tiny
    problem = api.simulate(truth, "denoise", noise_std=0.1)
    adapting = adapt_prior(prior, problem, {"steps": 2})
    adapting.noise_std = 10.0  # a residual far below this noise level: nothing to fit
    adapting.denoise(problem.y, 0.1)
    assert adapting.stopped == "the training residual reached the noise level"
    before = [p.detach().clone() for p in adapting.adapters]
    adapting.denoise(problem.y, 0.1)
    assert all(torch.equal(a, b) for a, b in zip(before, adapting.adapters))  # frozen


def test_one_adapter_for_a_volume_trained_on_slice_minibatches(tiny):
    prior, truth, _ = tiny
    problem = api.simulate(truth, "ct-parallel", views=10)
    assert problem.slices == 4
    adapting = adapt_prior(prior, problem, {"steps": 1, "batch": 2})
    seen = []
    real = adapting._losses
    adapting._losses = lambda d, idx: (seen.append(len(idx)), real(d, idx))[1]
    out = adapting.denoise(problem.truth_batch, 0.1)
    assert out.shape == problem.truth_batch.shape and seen == [2]


def test_saved_adapted_prior_loads_as_a_prior_and_names_its_base(tiny, tmp_path):
    prior, truth, path = tiny
    problem = api.simulate(truth, "ct-parallel", views=10)
    result = api.solve(problem, "dds", prior=prior, nfe=3, adapt={"steps": 2, "lr": 3e-3})
    report = result.report["adaptation"]
    assert report["calls"] == 3 and report["evaluations"] == 6 and report["base_prior"] == "tiny"
    saved = result.prior.save(tmp_path / "adapted", adapted_to="the test crop")
    meta = read_metadata(saved)
    assert meta["adapted_from"]["name"] == "tiny" and meta["adaptation"]["adapted_to"] == \
        "the test crop"
    reloaded = load_prior(saved)
    x = problem.truth_batch
    torch.testing.assert_close(reloaded.denoise(x, 0.1, generator=torch.Generator().manual_seed(3)),
                               result.prior.inner.denoise(x, 0.1,
                                                          generator=torch.Generator().manual_seed(3)),
                               rtol=1e-4, atol=1e-4)


def test_adaptation_option_checks(tiny):
    prior, truth, _ = tiny
    problem = api.simulate(truth, "ct-parallel", views=10)
    with pytest.raises(InputError, match="no prior to adapt"):
        api.solve(problem, "admm-tv", adapt=True)
    with pytest.raises(InputError, match="rank"):
        api.solve(problem, "dds", prior=prior, adapt={"rank": 0})
    with pytest.raises(InputError, match="no parameter"):
        api.solve(problem, "dds", prior=prior, adapt={"epochs": 3})


def test_cli_adapt_and_save_prior(tiny, tmp_path, capsys):
    _, truth, path = tiny
    crop = tmp_path / "crop.npy"
    np.save(crop, load_sample("ct")[0][2, 96:160, 96:160].astype(np.float32))
    argv = ["reconstruct", str(crop), "--modality", "ct", "--operator", "ct-parallel",
            "--views", "10", "--method", "dds", "--prior", f"{path}.safetensors", "--nfe", "2",
            "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv + ["--adapt-steps", "1"]) == 2
    assert "add --adapt" in capsys.readouterr().err
    assert main(argv + ["--adapt", "--adapt-steps", "1", "--save-prior",
                        str(tmp_path / "mine")]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["adaptation"]["params"]["steps"] == 1
    assert read_metadata(tmp_path / "mine")["adaptation"]["adapted_to"].startswith(str(crop))


def test_gui_job_streams_the_adaptation_loss(tiny):
    from napari_patchdiff.jobs import ReconJob, UpdateKind, recon_updates

    prior, truth, path = tiny
    problem = api.simulate(truth, "ct-parallel", views=10)
    job = ReconJob("dds", {"nfe": 3}, prior=str(path), adapt={"steps": 1}, interval=0.0)
    updates = list(recon_updates(job, problem))
    assert updates[-1].kind is UpdateKind.DONE and updates[-1].prior is not None
    assert any("adapt loss" in u.metrics for u in updates if u.kind is UpdateKind.STEP)
    assert updates[-1].report["adaptation"]["calls"] == 3

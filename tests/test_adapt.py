"""Test-time adaptation: low-rank adapters, the self-supervised loss and its guards, saving the
adapted prior, and the option in the API, the CLI and the GUI's job."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_patchdiff import api
from napari_patchdiff.cli import main
from napari_patchdiff.errors import InputError
from napari_patchdiff.io.samples import load_sample
from napari_patchdiff.priors import load_prior, read_metadata
from napari_patchdiff.priors.lora import LoRAConv2d, add_lora, lora_parameters, merge_lora
from napari_patchdiff.recon.adapt import ADAPTATION, AdaptingPrior, adapt_prior


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


def test_an_adapting_prior_given_to_solve_is_the_one_that_adapts(tiny):
    """A prior already adapting (a research subclass, or ``result.prior`` handed back) keeps
    its own counters, history and stop through ``solve``: choosing the precision must not run
    a copy of it (the copy counted the adapter evaluations, the caller's object said 0)."""
    prior, truth, _ = tiny
    problem = api.simulate(truth, "ct-parallel", views=10, noise_std=0.0)
    params = ADAPTATION.resolve(problem.op, 0.0, steps=2, lr=3e-3, discrepancy=0.0)
    adapting = AdaptingPrior(prior, problem.op, problem.y, 0.0, **params)
    result = api.solve(problem, "dds", prior=adapting, nfe=3)
    assert result.prior is adapting
    assert adapting.evaluations == 2 * len(adapting.history) > 0
    assert result.report["adaptation"]["evaluations"] == adapting.evaluations


def test_adaptation_runs_in_bfloat16_with_its_data_loss_in_float32(tiny):
    """With the network in bfloat16 (what ``precision="auto"`` picks on a CPU with AVX-512
    BF16 or AMX) the adapter still trains: its data loss leaves autocast, because the CT
    operator's sparse matrices have no bfloat16 product (it raised NotImplementedError)."""
    prior, truth, _ = tiny
    problem = api.simulate(truth, "ct-parallel", views=10, noise_std=0.0)
    params = ADAPTATION.resolve(problem.op, 0.0, steps=2, lr=3e-3, discrepancy=0.0)
    adapting = AdaptingPrior(prior, problem.op, problem.y, 0.0, **params)
    adapting.with_precision("bfloat16")
    x = problem.truth_batch + 0.2 * torch.randn(problem.truth_batch.shape,
                                                generator=torch.Generator().manual_seed(1))
    out = adapting.denoise(x, 0.2)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert adapting.evaluations == 2 and np.isfinite(adapting.history[0][1:]).all()
    result = api.solve(problem, "dds", prior=prior, nfe=3, adapt={"steps": 1},
                       precision="bfloat16")
    assert result.report["adaptation"]["evaluations"] > 0


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


def test_rounds_every_k_calls_a_tv_penalty_and_no_noise_stop(tiny):
    """``every``: a round of ``steps`` Adam steps before every k-th denoiser call only;
    ``tv``: the penalty joins the gradient (different adapters) but not the reported data
    loss; ``discrepancy`` 0: the noise-level stop never ends it."""
    prior, truth, _ = tiny
    problem = api.simulate(truth, "ct-parallel", views=10, noise_std=0.5)
    x = problem.truth_batch + 0.2 * torch.randn(problem.truth_batch.shape,
                                                generator=torch.Generator().manual_seed(1))
    runs = {}
    for name, given in {"plain": {}, "tv": {"tv": 1.0}}.items():
        adapting = adapt_prior(prior, problem, {"steps": 2, "every": 3, "lr": 3e-3,
                                                "discrepancy": 0.0, **given})
        adapting.noise_std = 10.0  # the data loss is far below it: only discrepancy 0 goes on
        for _ in range(7):
            adapting.denoise(x, 0.2)
        runs[name] = adapting
    plain, tv = runs["plain"], runs["tv"]
    assert plain.calls == 7 and len(plain.history) == 3  # calls 1, 4 and 7
    assert plain.evaluations == 6 and plain.stopped is None
    assert plain.history[0][1] == pytest.approx(tv.history[0][1])  # the same data loss first
    assert not all(torch.equal(a, b) for a, b in zip(plain.adapters, tv.adapters))


def test_the_guard_reverts_an_adapter_that_fits_new_iterates_worse(tiny):
    """``guard`` k: an adapter whose estimate fits each new iterate's data worse than the base
    network's over k rounds is dropped, and the base network denoises from then on; an
    adapter no worse than the base (here, fresh adapters: the identity) is kept; off (0, the
    default) it never reverts."""
    prior, truth, _ = tiny
    problem = api.simulate(truth, "ct-parallel", views=10, noise_std=0.0)
    x = problem.truth_batch + 0.2 * torch.randn(problem.truth_batch.shape,
                                                generator=torch.Generator().manual_seed(1))
    runs = {}
    for name, (guard, spoil) in {"kept": (2, False), "reverted": (2, True),
                                 "off": (0, True)}.items():
        params = ADAPTATION.resolve(problem.op, 0.0, steps=1, every=1, lr=1e-9,
                                    discrepancy=0.0, guard=guard)
        adapting = AdaptingPrior(prior, problem.op, problem.y, 0.0, **params)
        if spoil:  # adapters far from the identity: a worse network than the base
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in adapting.adapters:
                    p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        for _ in range(3):
            adapting.denoise(x, 0.2, torch.Generator().manual_seed(7))
        runs[name] = adapting
    kept, reverted, off = runs["kept"], runs["reverted"], runs["off"]
    assert len(kept.fresh) == 3 and max(abs(f) for f in kept.fresh) < 1e-6
    assert not kept.reverted and kept.stopped is None
    assert reverted.reverted and reverted.fresh[0] > 0 and len(reverted.fresh) == 2
    assert reverted.stopped.startswith("reverted to the base prior")
    assert reverted.summary()["reverted"] and reverted.calls == 3
    assert not off.reverted and off.fresh == [] and len(off.history) == 3
    # after reverting, the base network's own estimate
    out = reverted.denoise(x, 0.2, torch.Generator().manual_seed(3))
    assert torch.equal(out, prior.denoise(x, 0.2, torch.Generator().manual_seed(3)))


def test_a_shipped_prior_can_recommend_its_own_adaptation(tiny, tmp_path, monkeypatch):
    """A row of priors/shipped/adaptation.toml goes over the operator's and the method's
    defaults for that prior only, a method's sub-row of it over the row, and values the user
    gives win. The shipped `phantom` prior's row keeps the operator's gentle values (its guarded
    rounds lost on the validation slices), with DDS stepping at every 2nd call at lr 6e-4 (lr
    1e-3 at every call lost with DDS); the mechanism is also checked with a table of one row."""
    from napari_patchdiff.recon import adapt as adapt_mod
    from napari_patchdiff.recon.adapt import recommended

    _, truth, _ = tiny
    problem = api.simulate(truth, "ct-parallel", views=10, noise_std=0.2)
    gentle = ADAPTATION.resolve(problem.op, 0.2)
    for method in (None, "pnp-admm"):
        assert adapt_prior(load_prior("phantom"), problem, True, method).params == gentle
    assert adapt_prior(load_prior("phantom"), problem, True, "dds").params == {
        **gentle, "lr": 6e-4, "every": 2}
    assert recommended("ct", problem.op) == {} and recommended(None, problem.op) == {}
    assert recommended("phantom", problem.op) == recommended(load_prior("phantom"), problem.op)
    table = tmp_path / "adaptation.toml"
    table.write_text('[phantom.ct]\nsteps = {value = 3, cite = "test"}\n'
                     'rank = {value = 8, cite = "test"}\n'
                     '[phantom.ct.pnp-admm]\nrank = {value = 2, cite = "test"}\n',
                     encoding="utf-8")
    monkeypatch.setattr(adapt_mod, "RECOMMENDED", table)
    phantom = adapt_prior(load_prior("phantom"), problem, True)
    assert phantom.params["steps"] == 3 and phantom.params["rank"] == 8
    assert phantom.params["guard"] == 0  # the guard is DDS's ([adapt.ct.dds])
    assert adapt_prior(load_prior("phantom"), problem, True, "dds").params["guard"] == 5
    pnp = adapt_prior(load_prior("phantom"), problem, True, "pnp-admm").params
    assert pnp["rank"] == 2 and pnp["steps"] == 3  # the method's sub-row over the prior's row
    mine = adapt_prior(load_prior("phantom"), problem, {"steps": 1, "guard": 2})
    assert mine.params["steps"] == 1 and mine.params["rank"] == 8 and mine.params["guard"] == 2
    assert adapt_prior(load_prior("ct"), problem, True).params == gentle
    mri = api.simulate(api.truth_from_array(np.ones((32, 32), np.float32), modality="unit"),
                       "mri-cartesian", acceleration=4)
    assert recommended("phantom", mri.op) == {}  # a row for CT only


def test_dds_on_ct_adapts_in_guarded_rounds_with_any_prior(tiny):
    """When DDS samples CT, adaptation runs in rounds with the guard for a prior without its own
    row (the `ct` prior reverts, the first `phantom` prior kept its gains: recon/adapt.toml,
    [adapt.ct.dds]);
    PnP-ADMM keeps the operator's gentle values, which the guard cannot protect; what a user
    gives still wins; resolve_prior, the path of every run, passes the method."""
    _, truth, _ = tiny
    problem = api.simulate(truth, "ct-parallel", views=10, noise_std=0.2)
    rounds = {"steps": 3, "every": 3, "lr": 3e-3, "rank": 8, "discrepancy": 0.0, "guard": 5}
    for name in ("ct", "mri"):  # the mri prior on CT: no row of its own for CT either
        prior = load_prior(name)
        dds = adapt_prior(prior, problem, True, "dds")
        assert {k: dds.params[k] for k in rounds} == rounds, name
        assert adapt_prior(prior, problem, {"guard": 0}, "dds").params["guard"] == 0
    pnp = adapt_prior(load_prior("ct"), problem, True, "pnp-admm")
    assert pnp.params == ADAPTATION.resolve(problem.op, 0.2) and pnp.params["guard"] == 0
    from napari_patchdiff.recon.runs import resolve_prior

    assert resolve_prior(problem, "dds", "ct", True).params == dds.params  # the `ct` prior's


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
    result = api.solve(problem, "dds", prior=prior, nfe=3,
                       adapt={"steps": 2, "lr": 3e-3, "every": 1})
    report = result.report["adaptation"]
    assert report["calls"] == 3 and report["evaluations"] == 6 and report["base_prior"] == "tiny"
    saved = result.prior.save(tmp_path / "adapted", adapted_to="the test crop")
    meta = read_metadata(saved)
    assert meta["adapted_from"]["name"] == "tiny" and meta["adaptation"]["adapted_to"] == \
        "the test crop"
    reloaded = load_prior(saved)
    x = problem.truth_batch
    adapted = result.prior.inner.with_precision("float32")  # the run's may be bfloat16 ("auto")
    torch.testing.assert_close(reloaded.denoise(x, 0.1, generator=torch.Generator().manual_seed(3)),
                               adapted.denoise(x, 0.1, generator=torch.Generator().manual_seed(3)),
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
    from napari_patchdiff.plugin.jobs import ReconJob, UpdateKind, recon_updates

    prior, truth, path = tiny
    problem = api.simulate(truth, "ct-parallel", views=10)
    job = ReconJob("dds", {"nfe": 3}, prior=str(path), adapt={"steps": 1, "every": 1},
                    interval=0.0)
    updates = list(recon_updates(job, problem))
    assert updates[-1].kind is UpdateKind.DONE and updates[-1].prior is not None
    assert any("adapt loss" in u.metrics for u in updates if u.kind is UpdateKind.STEP)
    assert updates[-1].report["adaptation"]["calls"] == 3


# -- memory: refused up front, before anything big is allocated (issue 30, item 4) ---------------


def _ct_slice_problem(size: int = 256):
    o = (256 - size) // 2
    hu = load_sample("ct")[0][1, o:o + size, o:o + size].astype(np.float32)
    return api.simulate(api.truth_from_array(hu, {"modality": "ct"}), "ct-parallel", views=20,
                        noise_std=0.05)


def test_an_adapter_rank_that_cannot_fit_is_refused_at_once(tmp_path, capsys):
    """``--adapt --adapt-rank 100000`` ran 165 s and was killed by the kernel at 23.9 GB: the
    adapters' parameters, Adam's state and their activations are estimated from the network's
    convolutions first (about 1 TiB for a 256 x 256 slice), and refused in one line that names the rank and
    the largest that fits; that rank runs."""
    import re
    import time

    problem = _ct_slice_problem()
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"adaptation at rank 100000 .* needs about .* GiB") as e:
        api.solve(problem, "dds", prior="ct", nfe=2, adapt={"rank": 100000, "steps": 1})
    assert time.perf_counter() - t0 < 10  # loading the prior included; the check is ms
    fits = int(re.search(r"adapt=\{'rank': (\d+)\} or less", str(e.value)).group(1))
    assert 4 <= fits < 100000  # the default rank 4 fits on any computer that runs the tests
    crop = tmp_path / "slice.npy"
    np.save(crop, load_sample("ct")[0][1].astype(np.float32))
    argv = ["reconstruct", str(crop), "--modality", "ct", "--operator", "ct-parallel", "--views",
            "20", "--method", "dds", "--prior", "ct", "--nfe", "2", "--adapt", "--adapt-steps",
            "1", "--out", str(tmp_path / "o"), "--quiet"]
    t0 = time.perf_counter()
    assert main(argv + ["--adapt-rank", "100000"]) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rank 100000" in err[0] and "--adapt-rank" in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_reasonable_rank_runs_and_the_estimate_is_near_the_measured_peak():
    """Rank 16 on a 64 x 64 crop with the shipped CT prior runs; its peak memory, measured in a
    fresh process, is within a factor of two of the estimate (the estimate guards against
    settings that cannot fit, it does not budget finely)."""
    import subprocess
    import sys

    code = r"""
import os, sys, numpy as np, torch
torch.set_num_threads(1)
from napari_patchdiff import api
from napari_patchdiff.recon.memory import adaptation_bytes, conv_profile
from napari_patchdiff.io.samples import load_sample
hu = load_sample("ct")[0][1, 96:160, 96:160].astype(np.float32)
problem = api.simulate(api.truth_from_array(hu, {"modality": "ct"}), "ct-parallel", views=20,
                       noise_std=0.05)
prior = api.resolve_prior(problem, "dds", "ct")
conv_profile(prior.denoiser.net)
x = problem.truth_batch + 0.1
base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
adapting = api.resolve_prior(problem, "dds", prior, adapt={"rank": 16, "steps": 1, "batch": 1})
adapting.denoise(x, 0.5)
with open("/proc/self/status") as f:  # this process's peak (ru_maxrss may be the parent's)
    peak = 1024 * int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
fixed, per_rank = adaptation_bytes(prior, 16, problem.image_shape, 1)
print((peak - base) / (fixed + 16 * per_rank), adapting.evaluations)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ratio, evaluations = out.stdout.split()
    assert int(evaluations) == 1
    assert 0.5 <= float(ratio) <= 2.0, ratio

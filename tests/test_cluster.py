"""Ensembles and volumes on a Ray cluster (napari_patchdiff.recon.executors and .ray_cluster):
the same samples as a local run whatever the number of workers, a killed worker retried with
nothing lost or duplicated, cancel, unreachable clusters, and the CLI, API, job and GUI entry
points.

The Ray tests start a real local Ray instance (2 CPUs; Ray has no local mode any more) once
for the module and skip when the ``ray`` extra is not installed; the option checks run
without Ray."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
import tifffile

from napari_patchdiff import api
from napari_patchdiff.cli import main
from napari_patchdiff.conventions import hu_to_unit
from napari_patchdiff.errors import InputError
from napari_patchdiff.events import Cancelled, CancelToken, StepEvent
from napari_patchdiff.io.samples import load_sample
from napari_patchdiff.recon import executors
from napari_patchdiff.recon.ray_cluster import probe, quiet_stderr
from napari_patchdiff.uncertainty import SampleEvent, ensemble
from napari_patchdiff.uncertainty.ensemble import EnsembleWork, plan_batches

DDS = dict(nfe=3)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _crop() -> np.ndarray:
    """4 CT slices of 64 x 64 in HU."""
    return load_sample("ct")[0][:4, 96:160, 96:160].astype(np.float32)


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    """A tiny CT patch prior (random patch shifts, so the prior's own generator matters)."""
    from napari_patchdiff.training import TrainConfig, TrainingVolume, train

    out = tmp_path_factory.mktemp("prior") / "tiny"
    config = TrainConfig(modality="ct", network="tiny", patch_sizes=(16,), patch_probs=(1.0,),
                         batch=2, pad=8, inference_patch_size=16, steps=2, val_fraction=0)
    for _ in train([TrainingVolume(hu_to_unit(_crop()), "crop")], out, config):
        pass
    return str(out.with_suffix(".safetensors"))


def _slice_problem(index=1):
    truth = api.truth_from_array(_crop()[index], meta={"units": "HU"}, modality="ct")
    return api.simulate(truth, "ct-parallel", noise_std=0.05, seed=0, views=8)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tiny_prior):
    """8 antithetic samples (4 batches of one pair) drawn here."""
    problem = _slice_problem()
    events = list(ensemble(problem, "dds", prior=tiny_prior, samples=8, design="antithetic",
                           batch=2, seed=5, **DDS))
    return problem, np.stack([e.sample for e in events if isinstance(e, SampleEvent)])


def _samples(events) -> np.ndarray:
    done = sorted((e for e in events if isinstance(e, SampleEvent)), key=lambda e: e.index)
    return np.stack([e.sample for e in done])


# -- without Ray ----------------------------------------------------------------------------------


def test_cluster_options_are_checked(monkeypatch):
    assert executors.parse_cluster(None) is executors.LOCAL
    assert executors.parse_cluster(" local ") is executors.LOCAL
    with pytest.raises(InputError, match="unknown cluster 'dask'"):
        executors.parse_cluster("dask")
    with pytest.raises(InputError, match="workers.*needs a Ray cluster"):
        executors.resolve_executor("local", workers=2)
    with pytest.raises(InputError, match="positive integer"):
        executors.RayExecutor(workers=0)
    monkeypatch.setattr(executors, "ray_available", lambda: False)
    with pytest.raises(InputError, match=r"pip install \"napari-patchdiff\[ray\]\""):
        executors.parse_cluster("ray:10.0.0.1:6379")


def test_the_pure_batch_work_gives_the_local_samples(tiny_prior, local_run):
    """What a worker runs (EnsembleWork: the operator rebuilt from its recipe, the prior
    pickled) reproduces the local samples bit for bit, batch by batch, in any order."""
    import pickle

    from napari_patchdiff.recon.runs import method_params, resolve_prior

    problem, local = local_run
    prior = resolve_prior(problem, "dds", tiny_prior)
    used = method_params(problem, "dds", **DDS)
    used.pop("seed")
    work = pickle.loads(pickle.dumps(EnsembleWork(problem, "dds", prior, "antithetic", 5, used)))
    work.load("cpu")
    batches = plan_batches(8, "antithetic", 5, 2)
    for b in reversed(batches):
        out = work.run(b)
        np.testing.assert_array_equal(out["estimate"], local[b.start:b.start + 2])
        assert out["nfe"] == 3


def test_bad_cluster_options_on_the_command_line(tmp_path, capsys, monkeypatch):
    crop = tmp_path / "crop.tif"
    tifffile.imwrite(crop, _crop()[1])
    base = ["sample", str(crop), "--modality", "ct", "--operator", "denoise", "--noise", "0.05",
            "--prior", "ct", "--samples", "2", "--quiet"]
    cases = [(["--cluster", "dask"], "unknown cluster 'dask'"),
             (["--workers", "2"], "needs a Ray cluster"),
             (["--cluster", "ray", "--workers", "0"], "positive integer")]
    monkeypatch.setattr(executors, "ray_available", lambda: True)
    for extra, message in cases:
        out = tmp_path / "never"
        assert main(base + extra + ["--out", str(out)]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()


@contextlib.contextmanager
def _listener(reply: bytes | None = None):
    """A port on 127.0.0.1 that accepts connections (the kernel completes them) and never
    answers, or answers ``reply`` and closes: what a firewall, a proxy or another service
    holding the port looks like to a TCP connect."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def answer():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                conn.sendall(reply)

    if reply is not None:
        threading.Thread(target=answer, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


def test_an_address_that_does_not_answer_like_ray_is_one_line_within_seconds(monkeypatch, capfd,
                                                                              tmp_path):
    """Something accepts the TCP connection but is no Ray cluster (issue 30 item 13: the probe
    passed and ray.init retried for 25 s, printing 20 lines of its own logs): refused by the
    probe, before Ray is asked to connect. Loopback only; ray.init is replaced so that no test
    can start Ray's retries."""
    ray = pytest.importorskip("ray")
    calls = []

    def no_init(*args, **kwargs):
        calls.append(kwargs.get("address"))
        raise ConnectionError("ray.init would retry here")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_init)
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", 1.0)
    with _listener() as silent, _listener(b"HTTP/1.1 400 Bad Request\r\n\r\n") as web:
        t0 = time.perf_counter()
        with pytest.raises(InputError, match=f"cannot reach the Ray cluster at 127.0.0.1:{silent}"
                                             r".*did not answer"):
            executors.RayExecutor(f"127.0.0.1:{silent}").connect()
        with pytest.raises(InputError, match=f"cannot reach the Ray cluster at ray://127.0.0.1:{web}"
                                             r".*not as a Ray cluster"):
            executors.RayExecutor(f"ray://127.0.0.1:{web}").connect()
        assert time.perf_counter() - t0 < 10
        assert not calls
        monkeypatch.setattr(executors, "CONNECT_TIMEOUT", 5.0)  # the CLI at the default wait
        crop = tmp_path / "crop.tif"
        tifffile.imwrite(crop, _crop()[1])
        out = tmp_path / "never"
        t0 = time.perf_counter()
        assert main(["sample", str(crop), "--modality", "ct", "--operator", "denoise",
                     "--noise", "0.05", "--prior", "ct", "--samples", "2", "--nfe", "2",
                     "--cluster", f"ray:127.0.0.1:{silent}", "--out", str(out), "--quiet"]) == 2
        assert time.perf_counter() - t0 < 10
    err = capfd.readouterr().err.strip().splitlines()  # the file descriptor: Ray's C++ logs too
    assert len(err) == 1 and "did not answer" in err[0], err
    assert not calls and not out.exists()


def test_rays_own_output_during_a_failed_connect_is_held_back(capfd):
    """What Ray's C++ core writes to the stderr descriptor during ray.init is dropped when the
    connect fails (the InputError's line says why) and written out when it succeeds."""
    with pytest.raises(RuntimeError):
        with quiet_stderr():
            os.write(2, b"rpc_client.h:153: Failed to connect to GCS\n")
            raise RuntimeError("no cluster")
    with quiet_stderr():
        os.write(2, b"connected, with a warning\n")
    assert capfd.readouterr().err == "connected, with a warning\n"


def test_an_ensemble_that_cannot_fit_is_refused_before_sampling(monkeypatch):
    """Samples, batch and the workers of a Ray instance on this machine go through the memory
    estimate (napari_patchdiff.recon.memory) before anything is sampled or started, here as on a
    computer of 4 GiB (half of it allowed): the shipped CT prior on the 64 x 64 crop."""
    from napari_patchdiff.recon import memory

    monkeypatch.setattr(memory, "memory_limit", lambda: 2 * 2**30)
    if executors.ray_available():
        import ray

        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    problem = _slice_problem()

    def sample(**kw):
        def no_event(ev):
            raise AssertionError("sampling started")

        return api.sample(problem, "dds", prior="ct", nfe=2, on_event=no_event, **kw)

    with pytest.raises(InputError, match=r"an ensemble of 100000 samples of 1 x 64 x 64 drawn 2 "
                                         r"at a time needs about [\d.]+ GiB .* fewer samples="):
        sample(samples=100000, batch=2)
    with pytest.raises(InputError, match="drawn 8192 at a time needs"):
        sample(samples=8192, batch=8192)
    with pytest.raises(InputError, match="drawn 16 at a time on 4 workers of this machine"):
        sample(samples=64, batch=16, cluster=api.RayExecutor(workers=4))
    # what fits: the same ensembles, smaller (estimated only: nothing is run)
    for kw in (dict(samples=8192, batch=2), dict(samples=64, batch=16, workers=1)):
        assert memory.ensemble_bytes(api.resolve_prior(problem, "dds", "ct"), "dds", (64, 64), 1,
                                     **kw) <= 2 * 2**30, kw
    # a cluster's address: its workers' memory is not this machine's
    assert api.RayExecutor("10.0.0.5:6379", workers=4).workers_here(4) == 0


def test_a_reconstruction_that_cannot_fit_is_refused_before_it_starts(monkeypatch):
    """--batch (a volume's window) and --workers of a Ray instance on this machine go through
    the estimate too, here as on a computer of 4 GiB: DPS keeps every patch of its batch for
    the backward pass (186 MB per 64 x 64 slice with the shipped CT prior); DDS windows of 2
    slices (6 with their context) on 8 workers."""
    from napari_patchdiff.recon import memory

    monkeypatch.setattr(memory, "memory_limit", lambda: 2 * 2**30)
    if executors.ray_available():
        import ray

        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    hu = load_sample("ct")[0][:16, 96:160, 96:160].astype(np.float32)
    truth = api.truth_from_array(hu, meta={"units": "HU"}, modality="ct")
    problem = api.simulate(truth, "ct-parallel", noise_std=0.05, seed=0, views=8)

    def no_event(ev):
        raise AssertionError("the reconstruction started")

    with pytest.raises(InputError, match=r"reconstructing 16 slice\(s\) of 64 x 64 at a time "
                                         r"with dps needs about .* smaller batch=$"):
        api.solve(problem, "dps", prior="ct", batch=16, nfe=2, on_event=no_event)
    with pytest.raises(InputError, match="6 slice.* with dds on 8 workers of this machine"):
        api.solve(problem, "dds", prior="ct", batch=2, nfe=2, on_event=no_event,
                  cluster=api.RayExecutor(workers=8))
    prior = api.resolve_prior(problem, "dds", "ct")
    assert memory.run_bytes(prior, "dps", (64, 64), 8) <= 2 * 2**30  # batch 4 with context
    assert memory.run_bytes(prior, "dds", (64, 64), 6, workers=1) <= 2 * 2**30


# -- on a local Ray instance ----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_samples_are_bit_identical_to_local(ray_cluster, tiny_prior, local_run, workers):
    problem, local = local_run
    ex = api.RayExecutor(workers=workers)
    res = api.sample(problem, "dds", prior=tiny_prior, samples=8, design="antithetic", batch=2,
                     seed=5, cluster=ex, **DDS)
    np.testing.assert_array_equal(res.samples, local)
    r = res.report["executor"]
    assert r["executor"] == "ray" and r["workers"] == workers and r["devices"] == ["cpu"]
    assert res.report["nfe"] == 4 * 3  # four batches of three evaluations, counted once each


def test_a_ray_worker_matches_a_local_run_at_the_same_thread_count(ray_cluster):
    """Bit-identical at the same thread count (tests/test_reproducibility.py): with the shipped
    CT prior on the 64 x 64 crop (8 patches per network call, where oneDNN's convolutions round
    differently on 1 and 2 threads on the development CPU), a worker of 2 threads gives a
    2-thread local run's samples (the other tests here compare 1 with 1)."""
    import torch

    problem = _slice_problem()
    kw = dict(prior="ct", samples=2, design="antithetic", batch=2, seed=5, **DDS)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        local = api.sample(problem, "dds", **kw).samples
    finally:
        torch.set_num_threads(before)
    remote = api.sample(problem, "dds", cluster=api.RayExecutor(workers=1, threads=2), **kw)
    assert remote.report["executor"]["workers"] == 1
    np.testing.assert_array_equal(remote.samples, local)


def test_the_probe_accepts_a_ray_cluster(ray_cluster):
    """The probe's HTTP/2 hello gets the GCS's SETTINGS frame (its port on 127.0.0.1)."""
    port = int(ray_cluster.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    probe(f"127.0.0.1:{port}", executors.CONNECT_TIMEOUT)


def test_rqmc_groups_on_ray_match_local(ray_cluster, tiny_prior):
    problem = _slice_problem(2)
    kw = dict(prior=tiny_prior, samples=8, design="rqmc", batch=4, seed=1, **DDS)
    local = _samples(ensemble(problem, "dds", **kw))
    remote = _samples(ensemble(problem, "dds", cluster="ray", **kw))
    np.testing.assert_array_equal(remote, local)


def test_a_volume_runs_window_by_window_on_ray(ray_cluster, tiny_prior):
    truth = api.truth_from_array(_crop(), meta={"units": "HU"}, modality="ct")
    problem = api.simulate(truth, "ct-parallel", noise_std=0.05, seed=0, views=8)
    local = api.solve(problem, "dds", prior=tiny_prior, batch=2, seed=3, **DDS)
    events = []
    remote = api.solve(problem, "dds", prior=tiny_prior, batch=2, seed=3, cluster="ray",
                       on_event=events.append, **DDS)
    np.testing.assert_array_equal(remote.recon, local.recon)
    assert remote.report["finished_slices"] == [0, 1, 2, 3]
    assert remote.report["nfe"] == local.report["nfe"]
    assert [e.step for e in events] == [3, 6] and events[-1].total == 6
    # one image: one run on one worker, the same as here
    one = _slice_problem()
    a = api.solve(one, "dds", prior=tiny_prior, seed=2, **DDS)
    b = api.solve(one, "dds", prior=tiny_prior, seed=2, cluster="ray", **DDS)
    np.testing.assert_array_equal(a.recon, b.recon)


def test_a_killed_worker_is_retried_with_nothing_lost_or_duplicated(ray_cluster, tiny_prior,
                                                                    local_run):
    problem, local = local_run
    killed, pids, seen = [], set(), []

    def kill_at_the_first_result(ev):
        if isinstance(ev, StepEvent):
            pids.add(ev.info["worker"])
            if not killed:  # this worker was just handed the next batch: kill it mid-run
                killed.append(ev.info["worker"])
                os.kill(ev.info["worker"], signal.SIGKILL)
        else:
            seen.append(ev.index)

    res = api.sample(problem, "dds", prior=tiny_prior, samples=8, design="antithetic", batch=2,
                     seed=5, cluster=api.RayExecutor(workers=2), on_event=kill_at_the_first_result,
                     nfe=12)
    assert killed and sorted(seen) == list(range(8))  # every sample once
    assert len(pids) == 3  # two workers and the one restarted in place of the killed one
    again = api.sample(problem, "dds", prior=tiny_prior, samples=8, design="antithetic",
                       batch=2, seed=5, nfe=12)
    np.testing.assert_array_equal(res.samples, again.samples)


def test_cancel_stops_the_workers_and_keeps_finished_samples(ray_cluster, tiny_prior, local_run):
    problem, local = local_run
    token, pids = CancelToken(), []

    def cancel_after_the_first_batch(ev):
        if isinstance(ev, StepEvent):
            pids.append(ev.info["worker"])
        elif ev.index % 2 == 1:  # a whole pair is in
            token.cancel()

    with pytest.raises(Cancelled) as info:
        api.sample(problem, "dds", prior=tiny_prior, samples=8, design="antithetic", batch=2,
                   seed=5, cluster=api.RayExecutor(workers=2), cancel=token,
                   on_event=cancel_after_the_first_batch, **DDS)
    partial = info.value.partial
    kept = partial.report["sample_indices"]
    assert partial.report["cancelled"] and len(kept) >= 2 and len(kept) % 2 == 0
    np.testing.assert_array_equal(partial.samples, local[kept])
    deadline = time.time() + 20  # the actors were killed: their processes go away
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_an_unreachable_cluster_is_a_clear_error(ray_cluster, tiny_prior, local_run, tmp_path,
                                                 capsys):
    problem, _ = local_run
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="cannot reach the Ray cluster at 127.0.0.1:9"):
        api.sample(problem, "dds", prior=tiny_prior, samples=2, cluster="ray:127.0.0.1:9",
                   **DDS)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(InputError, match="HOST:PORT"):
        api.sample(problem, "dds", prior=tiny_prior, samples=2, cluster="ray:nowhere", **DDS)
    crop = tmp_path / "crop.tif"
    tifffile.imwrite(crop, _crop()[1])
    out = tmp_path / "never"
    assert main(["sample", str(crop), "--modality", "ct", "--operator", "ct-parallel",
                 "--views", "8", "--noise", "0.05", "--prior", tiny_prior, "--samples", "2",
                 "--nfe", "2", "--cluster", "ray:127.0.0.1:9", "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Ray cluster" in err[0]
    assert not out.exists()


def test_adaptation_is_refused_on_a_cluster(ray_cluster, tiny_prior, local_run):
    problem, _ = local_run
    with pytest.raises(InputError, match="locally only"):
        api.sample(problem, "dds", prior=tiny_prior, samples=2, adapt=True, cluster="ray",
                   **DDS)


def test_cli_sample_on_ray_writes_the_local_results(ray_cluster, tiny_prior, tmp_path, capsys):
    crop = tmp_path / "crop.tif"
    tifffile.imwrite(crop, _crop()[1])
    args = ["sample", str(crop), "--modality", "ct", "--operator", "ct-parallel", "--views", "8",
            "--noise", "0.05", "--prior", tiny_prior, "--samples", "4", "--batch", "2",
            "--nfe", "2", "--noise-design", "antithetic", "--seed", "4"]
    assert main(args + ["--out", str(tmp_path / "local"), "--quiet"]) == 0
    assert main(args + ["--cluster", "ray", "--workers", "2", "--out",
                        str(tmp_path / "ray")]) == 0
    assert "ran on 2 Ray worker(s)" in capsys.readouterr().err
    for name in ("samples.tif", "mean.tif", "std.tif"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "ray" / name),
                                      tifffile.imread(tmp_path / "local" / name))
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert report["executor"]["workers"] == 2


def test_jobs_stream_ray_batches_into_the_gui_updates(ray_cluster, tiny_prior, local_run):
    from napari_patchdiff.plugin.jobs import ReconJob, recon_updates

    problem, local = local_run
    job = ReconJob("dds", dict(DDS), seed=5, samples=8, design="antithetic", batch=2,
                   prior=tiny_prior, interval=0.0, cluster="ray")
    updates = list(recon_updates(job, problem))
    kinds = [u.kind for u in updates]
    assert kinds.count("sample") == 3 and kinds[-1] == "done"
    done = updates[-1]
    np.testing.assert_array_equal(done.samples, np.asarray(problem.truth.to_units(local)))
    assert done.report["executor"]["executor"] == "ray"


def test_ray_is_imported_by_the_ray_cluster_module_only():
    import subprocess
    import sys

    from test_architecture import PACKAGE, _imports, _module_name

    users = {_module_name(p) for p in PACKAGE.rglob("*.py")
             if any(i.split(".")[0] == "ray" for i in _imports(p))}
    assert users == {"napari_patchdiff.recon.ray_cluster"}
    code = ("import sys, napari_patchdiff.api, napari_patchdiff.cli, napari_patchdiff.plugin.jobs; "
            "assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_reconstruct_widget_runs_an_ensemble_on_ray(ray_cluster, tiny_prior,
                                                        make_napari_viewer):
    pytest.importorskip("napari")
    from napari_patchdiff._qt.scripting import open_viewer

    viewer = make_napari_viewer()
    s = open_viewer(sample=None, viewer=viewer)
    viewer.add_image(_crop(), name="crop", metadata={"modality": "ct", "units": "HU"})
    s.simulate("ct-parallel", layer="crop", slice=1, views=8, noise_std=0.05)
    s.use_prior(tiny_prior)
    rec = s.reconstructor
    assert rec.cluster_box.currentText() == "local"  # beside the device picker, local by default
    rec.configure(method="dds", cluster="dask")
    assert rec.run() is None and "unknown cluster" in rec.panel.status.text()
    s.reconstruct("dds", samples=4, design="antithetic", batch=2, cluster="ray", nfe=2, seed=4)
    assert s.wait(120)
    layer = viewer.layers["dds #1 samples"]  # runs name their layers "<method> #n ..."
    assert layer.data.shape == (4, 1, 64, 64)
    assert layer.metadata["executor"]["executor"] == "ray" and layer.metadata["samples"] == 4

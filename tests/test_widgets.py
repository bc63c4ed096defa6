"""The dock widgets in a real napari window (Xvfb): simulate, reconstruct, sample, cancel,
errors, training, and the TIFF writer/reader, on small images and a tiny prior."""
import numpy as np
import pytest
import torch

pytest.importorskip("napari")

from qtpy.QtWidgets import QLabel  # noqa: E402

from napari_patchdiff import io  # noqa: E402
from napari_patchdiff._qt.scripting import Session, open_viewer  # noqa: E402
from napari_patchdiff.conventions import hu_to_unit  # noqa: E402
from napari_patchdiff.io.samples import load_sample  # noqa: E402
from napari_patchdiff.plugin.state import state_for  # noqa: E402
from napari_patchdiff.recon import runs  # noqa: E402
from napari_patchdiff.operators import OPERATORS  # noqa: E402

PLUGIN = "napari-patchdiff"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _ct64():
    """4 CT slices of 64 x 64 in HU (every 4th pixel of the sample)."""
    data, meta = load_sample("ct")
    return data[:4, ::4, ::4].astype(np.float32), {"modality": "ct", "units": "HU"}


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory):
    """A tiny CT patch prior for 64 x 64 slices, trained for a few steps."""
    from napari_patchdiff.training import TrainConfig, TrainingVolume, train

    out = tmp_path_factory.mktemp("prior") / "tiny"
    vol = hu_to_unit(_ct64()[0])
    config = TrainConfig(modality="ct", network="tiny", patch_sizes=(16,), patch_probs=(1.0,),
                         batch=2, pad=8, inference_patch_size=16, steps=4, val_fraction=0)
    for _ in train([TrainingVolume(vol, "ct64")], out, config):
        pass
    return str(out)


@pytest.fixture
def session(make_napari_viewer):
    """A viewer with the plugin docked, a 64 x 64 CT layer and 8-view CT of its slice 1."""
    viewer = make_napari_viewer()
    s = open_viewer(sample=None, viewer=viewer)
    data, meta = _ct64()
    viewer.add_image(data, name="ct64", metadata=meta, contrast_limits=(-1000, 600))
    s.simulate("ct-parallel", layer="ct64", slice=1, views=8, noise_std=0.05)
    s.reconstructor.interval = 0.0  # stream every step, however long showing it takes
    s.reconstructor.panel.max_load = None
    return s


def _run(s, method, **kw):
    """Run ``method`` and return its updates (collected from a connection made before the start,
    so a quick job cannot finish before the test listens)."""
    updates = []
    panel = s.reconstructor.panel
    panel.updated.connect(updates.append)
    try:
        s.reconstruct(method, **kw)
        assert s.wait(60)
    finally:
        panel.updated.disconnect(updates.append)
    return updates


def test_widgets_from_the_plugin_menu_and_writer_round_trip(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "ct")
    _, meas = viewer.window.add_plugin_dock_widget(PLUGIN, "Measurement")
    _, prior = viewer.window.add_plugin_dock_widget(PLUGIN, "Prior")
    _, rec = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct")
    meas.configure(layer="CT lung (HU)", slice=10, operator="ct-parallel", views=8, noise_std=0.1)
    assert meas.simulate() is not None
    assert viewer.layers["measurement"].data.shape == (8, 363)
    assert viewer.layers["initial (fbp)"].data.shape == (256, 256)
    assert "ct-parallel" in rec.problem_label.text() and "slice 10" in rec.problem_label.text()
    dds = rec.method_box.findText("dds")
    assert not rec.method_box.model().item(dds).isEnabled()  # no prior chosen yet
    prior.use("ct")
    assert rec.method_box.model().item(dds).isEnabled()
    assert "prior for ct images" in prior.info.toPlainText()

    rec.configure(method="fbp")
    rec.run()
    assert Session(viewer, meas, prior, rec).wait(60)
    layer = viewer.layers["fbp #1"]
    assert layer.metadata["method"] == "fbp" and layer.metadata["units"] == "HU"
    assert rec.panel.run_button.isEnabled() and "PSNR" in rec.metrics.text()

    path = tmp_path / "fbp.tif"
    layer.save(str(path), plugin=PLUGIN)
    data, meta = io.read_image(path)
    np.testing.assert_allclose(data, layer.data, rtol=1e-6)
    assert data.dtype == np.float32 and meta["method"] == "fbp" and meta["psnr"] > 10
    assert meta["units"] == "HU" and np.allclose(meta["spacing"], layer.scale)
    (back,) = viewer.open(str(path), plugin=PLUGIN)
    assert back.metadata["method"] == "fbp" and np.allclose(back.scale, layer.scale)


def test_dds_streams_then_finishes(session, tiny_prior):
    session.use_prior(tiny_prior)
    updates = _run(session, "dds", nfe=6, seed=3)
    kinds = [u.kind for u in updates]
    assert kinds.count("step") >= 2 and kinds[-1] == "done"
    layer = session.viewer.layers["dds #1"]
    assert layer.data.shape == (64, 64)
    r = layer.metadata
    assert r["method"] == "dds" and r["nfe"] == 6 and r["method_params"]["seed"] == 3
    assert r["prior"]["modality"] == "ct" and "psnr" in r
    assert "PSNR" in session.reconstructor.metrics.text()


def test_antithetic_sampling_streams_samples_and_summaries(session, tiny_prior):
    session.use_prior(tiny_prior)
    updates = _run(session, "dds", nfe=3, samples=6, design="antithetic", batch=2)
    assert [u.kind for u in updates].count("sample") == 2  # after each pair but the last
    steps = [u.text for u in updates if u.kind == "step"]
    assert steps and all(t.startswith("batch ") and "(2 of 6 samples at once)" in t
                         for t in steps), steps
    layers = session.viewer.layers
    assert layers["dds #1 samples"].data.shape == (6, 1, 64, 64)  # sample axis first, at slice 1
    for name in ("mean", "std", "lower (sample quantile)", "upper (sample quantile)",
                 "pair correlation"):
        assert layers[f"dds #1 {name}"].data.shape == (64, 64), name
    assert "dds #1 lower (calibrated)" not in layers  # no calibration fits the tiny prior
    assert "dds #1" not in layers  # the run's live estimate gives way to the ensemble
    r = layers["dds #1 std"].metadata
    assert r["design"] == "antithetic" and r["samples"] == 6 and "coverage" in r
    assert (layers["dds #1 std"].data >= 0).all()
    assert np.abs(layers["dds #1 pair correlation"].data).max() <= 1
    assert session.reconstructor.panel.status.text().startswith("done: 6 samples of dds")


def test_cancel_keeps_the_partial_estimate(session):
    rec = session.reconstructor
    rec.panel.updated.connect(rec.panel.cancel)  # at the first update
    try:
        session.reconstruct("admm-tv", iterations=100000)
        assert session.wait(60)
    finally:
        rec.panel.updated.disconnect(rec.panel.cancel)
    layer = session.viewer.layers["admm-tv #1 (cancelled)"]
    assert layer.data.shape == (64, 64) and layer.metadata["cancelled"] is True
    assert 0 < layer.metadata["iterations"] < 100000
    assert rec.panel.run_button.isEnabled() and "cancelled" in rec.panel.status.text()


@pytest.mark.parametrize("error, expected", [
    (RuntimeError("boom in the solver"), "RuntimeError: boom in the solver"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "out of GPU memory"),
])
def test_worker_errors_reach_the_user(session, monkeypatch, error, expected):
    from napari.utils.notifications import notification_manager

    def failing(*args, **kwargs):
        yield from ()
        raise error

    monkeypatch.setattr(runs, "iterate", failing)
    shown = []
    notification_manager.notification_ready.connect(shown.append)
    try:
        _run(session, "cg")
    finally:
        notification_manager.notification_ready.disconnect(shown.append)
    rec = session.reconstructor
    assert expected in rec.panel.status.text() and rec.panel.status.text().startswith("Error")
    assert rec.panel.run_button.isEnabled() and not rec.panel.running
    assert any(expected in str(n.message) for n in shown)
    monkeypatch.undo()
    assert _run(session, "fbp")[-1].kind == "done"  # the plugin is still usable


def test_train_a_prior_from_layers(session, tmp_path):
    p = session.prior
    p.configure(layers=["ct64"], network="tiny", steps=3, batch=2, patch_sizes=(16,),
                out=tmp_path / "mine")
    updates = []
    p.panel.updated.connect(updates.append)
    p.train()
    assert session.wait(60)
    p.panel.updated.disconnect(updates.append)
    assert updates[-1].kind == "done" and updates[-1].report["steps"] == 3
    assert state_for(session.viewer).prior == str(tmp_path / "mine")
    assert "trained: 3 steps on cpu" in p.info.toPlainText() and "loss" in p.loss.text()
    # the memorisation monitor ran at the final validation: live in the label, in the metadata
    assert "memorisation gap" in p.loss.text()
    assert "memorisation gap (about 1" in p.info.toPlainText()
    p.train()  # again: refuses to replace the checkpoint unless asked to
    assert session.wait(60) and "exists" in p.panel.status.text()
    assert p.panel.run_button.isEnabled()
    p.configure(stop_on_memorisation=True)
    assert p.early_stop_box.isChecked()
    p.configure(stop_on_memorisation=False)


def test_widget_defaults_are_the_cli_and_api_defaults(make_napari_viewer):
    """The Prior widget's training fields start at the declared defaults (TRAIN_PARAMS) that
    TrainConfig and ``napari-patchdiff train`` use, but for WIDGET_DEFAULTS, the one documented
    difference (a quick run); the Reconstruct widget's run fields at those of RUN_PARAMS, which
    ``reconstruct`` and ``sample`` take. Their tooltips are the declared help."""
    from napari_patchdiff.cli import build_parser
    from napari_patchdiff.params import PRECISION, RUN_PARAMS
    from napari_patchdiff.training import TrainConfig
    from napari_patchdiff.training.config import TRAIN_PARAMS, WIDGET_DEFAULTS

    s = open_viewer(sample=None, viewer=make_napari_viewer())
    gui = s.prior.train_options()
    api = {p.name: p.default for p in TRAIN_PARAMS}
    cli = vars(build_parser().parse_args(["train", "vol.tif", "--out", "p"]))
    assert WIDGET_DEFAULTS == {"steps": 2000}  # the override, documented where it is declared
    for name, value in gui.items():
        expected = WIDGET_DEFAULTS.get(name, api[name])
        assert value == expected, name
        assert (tuple(cli[name]) if isinstance(cli[name], list) else cli[name]) == api[name]
    assert {k for k in gui if gui[k] != api[k]} == set(WIDGET_DEFAULTS)
    assert TrainConfig(**gui) == TrainConfig(**WIDGET_DEFAULTS)
    assert "'save to'" in s.prior.resume_box.toolTip() and "``" not in (
        s.prior.early_stop_box.toolTip())
    rec, run = s.reconstructor, {p.name: p for p in RUN_PARAMS}
    for command in ("reconstruct", "sample"):
        args = build_parser().parse_args([command, "sample:ct", "--out", "o"])
        assert rec.seed_box.value() == args.seed == run["seed"].default
        assert rec.device_box.currentText() == args.device == run["device"].default
        assert rec.cluster_box.currentText() == args.cluster == run["cluster"].default
        assert args.precision == rec.precision_box.currentText() == run["precision"].default
    assert run["precision"].default == "auto"
    assert rec.precision_box.toolTip() == PRECISION.help
    s.prior.configure(steps=7, batch=0, patch_sizes=(16, 32), resume=True)
    assert {k: v for k, v in s.prior.train_options().items() if gui[k] != v} == {
        "steps": 7, "patch_sizes": (16, 32), "resume": True}


def test_load_a_measurement_written_by_the_cli(session, tmp_path):
    from napari_patchdiff import cli

    assert cli.main(["reconstruct", "sample:ct", "--slice", "10", "--operator", "ct-parallel",
                     "--views", "8", "--noise", "0.1", "--out", str(tmp_path), "--quiet"]) == 0
    problem = session.measurement.load_measurement(tmp_path / "measurement.tif")
    assert problem is not None and problem.truth is None and problem.noise_std == 0.1
    assert problem.op.params["views"] == 8 and problem.op.image_shape == (256, 256)
    assert session.viewer.layers["measurement"].data.shape == (8, 363)
    assert _run(session, "fbp")[-1].kind == "done"
    recon, _ = io.read_image(tmp_path / "recon.tif")  # the CLI's FBP, in HU
    fbp = session.viewer.layers["fbp #1"]
    assert fbp.metadata["units"] == "normalised [0, 1]"  # no truth: the normalised scale
    np.testing.assert_allclose(fbp.data * 2048 - 1024, recon, atol=0.5)


def test_gui_runs_a_method_with_the_same_defaults_as_python(session, tiny_prior, monkeypatch):
    """The Reconstruct widget, the API and a direct Python call of the method resolve the same
    parameters for the same problem, and give the same reconstruction."""
    from napari_patchdiff import api
    from napari_patchdiff.priors import precision

    # auto is float32 on a CPU without bfloat16 instructions, as the direct call below
    monkeypatch.setattr(precision, "cpu_bfloat16_instructions", lambda: ())
    from napari_patchdiff.events import run_to_end
    from napari_patchdiff.priors import load_prior
    from napari_patchdiff.solvers.diffusion import dds

    problem = state_for(session.viewer).problem
    done = _run(session, "admm-tv")[-1]
    assert done.report["method_params"] == api.method_params(problem, "admm-tv")
    session.use_prior(tiny_prior)
    done = _run(session, "dds", nfe=3)[-1]
    params = api.method_params(problem, "dds", nfe=3)
    assert done.report["method_params"] == params == dds.resolve(problem.op, 0.05, nfe=3)
    direct = run_to_end(dds(problem.op, problem.y, noise_std=0.05, prior=load_prior(tiny_prior),
                            nfe=3)).estimate[0, 0].numpy()
    np.testing.assert_allclose(problem.truth.to_units(direct), done.image, rtol=0, atol=1e-3)
    # the precision box: bfloat16 reaches the run and its report, auto is the default
    session.reconstructor.configure(precision="bfloat16")
    done = _run(session, "dds", nfe=3)[-1]
    assert done.report["prior"]["precision"] == "bfloat16"
    session.reconstructor.configure(precision="auto")
    assert session.reconstructor.snapshot().precision == "auto"


def test_adapt_in_the_reconstruct_widget(session, tiny_prior, tmp_path):
    """The adaptation checkbox runs a diffusion method with test-time adaptation: its loss is
    shown live, and the adapted prior can be saved and reused."""
    from napari_patchdiff.priors import read_metadata

    session.use_prior(tiny_prior)
    rec = session.reconstructor
    rec.configure(adapt={"steps": 1, "every": 1})
    assert rec.adapt_box.isChecked() and not rec.save_prior_button.isEnabled()
    updates = _run(session, "dds", nfe=3)
    assert updates[-1].kind == "done" and updates[-1].report["adaptation"]["calls"] == 3
    assert "adaptation loss" in rec.metrics.text() and rec.save_prior_button.isEnabled()
    guard = rec.adapt_form.inputs["guard"]  # the defaults shown follow the method
    assert guard.placeholderText() == "auto: 5"  # DDS on CT: guarded rounds
    rec.method_box.setCurrentText("pnp-admm")
    assert guard.placeholderText() == "auto: 0"
    rec.method_box.setCurrentText("dds")
    saved = rec.save_prior(tmp_path / "adapted")
    assert read_metadata(saved)["adapted_from"]["name"] == "tiny"
    session.use_prior(saved)
    rec.configure(adapt=False)
    assert _run(session, "dds", nfe=2)[-1].kind == "done"
    assert not rec.save_prior_button.isEnabled()  # the last run did not adapt
    rec.configure(adapt=True)
    assert _run(session, "dds", nfe=2)[-1].kind == "done" and rec.save_prior_button.isEnabled()
    session.simulate("ct-parallel", layer="ct64", slice=2, views=8, noise_std=0.05)
    assert not rec.save_prior_button.isEnabled()  # adapted to the previous measurement


# ------------------------------------------------------------------------------------------------
# a laptop screen: every button reachable; results kept run after run


def _dock_widgets(s):
    return {"Measurement": s.measurement, "Prior": s.prior, "Reconstruct": s.reconstructor}


@pytest.mark.parametrize("size", [(1366, 768), (1920, 1080)])
def test_every_button_is_reachable_on_a_laptop_screen(make_napari_viewer, tiny_prior, size):
    """napari's default layout with the three docks (stacked as Plugins > ... opens them) on a
    1366 x 768 / 1920 x 1080 screen: the window fits, and every button of every dock (advanced
    sections opened, a volume problem with a diffusion method, samples and adaptation, so that
    the most fields show) can be scrolled into view inside the screen."""
    from qtpy.QtCore import QPoint, QRect
    from qtpy.QtWidgets import QAbstractButton, QApplication, QScrollArea

    viewer = make_napari_viewer(show=True)
    s = open_viewer(sample=None, viewer=viewer)
    data, meta = _ct64()
    viewer.add_image(data, name="ct64", metadata=meta, contrast_limits=(-1000, 600))
    s.simulate("ct-parallel", layer="ct64", views=8, noise_std=0.05)  # all 4 slices
    s.use_prior(tiny_prior)
    s.reconstructor.configure(method="dds", samples=4, adapt=True)
    screen = QRect(0, 0, *size)
    window = s.reconstructor.window()
    window.showNormal()
    window.setGeometry(screen)
    QApplication.processEvents()
    assert screen.contains(window.frameGeometry()), (window.frameGeometry(), window.minimumSize())
    checked = 0
    for name, widget in _dock_widgets(s).items():
        for section in getattr(widget, "sections", []):
            section.expand(True)
        for _ in range(5):  # the new minimum width climbs from the dock to the window's layout
            QApplication.processEvents()
        scroll = widget.findChild(QScrollArea)
        assert scroll is not None, f"the {name} dock is not in a scroll area"
        assert scroll.viewport().height() >= 60, name
        view = QRect(scroll.viewport().mapToGlobal(QPoint(0, 0)), scroll.viewport().size())
        for button in widget.findChildren(QAbstractButton):
            if not button.isVisibleTo(widget):  # hidden: does not apply to this problem
                continue
            inside = scroll.isAncestorOf(button)  # else below it (the Run panel), always shown
            if inside:
                scroll.ensureWidgetVisible(button, 0, 0)
                QApplication.processEvents()
            rect = QRect(button.mapToGlobal(QPoint(0, 0)), button.size())
            label = f"{name}: {button.text() or type(button).__name__}"
            assert button.isVisible(), label
            assert screen.contains(rect), (label, rect)
            if inside:
                assert view.contains(rect), (label, rect, view)  # not clipped
            checked += 1
    assert checked >= 15


def _names(viewer):
    return {layer.name for layer in viewer.layers}


def _cancelled_run(s, method, **kw):
    panel = s.reconstructor.panel
    panel.updated.connect(panel.cancel)  # at the first update
    try:
        return _run(s, method, **kw)
    finally:
        panel.updated.disconnect(panel.cancel)


def test_runs_never_delete_or_overwrite_earlier_results(session, tiny_prior):
    """Two consecutive runs, an ensemble and cancelled runs: every run's layers get names of
    their own, the cancelled ones say so, and no layer of an earlier run (or of the user) is
    removed or changed."""
    viewer = session.viewer
    rec = session.reconstructor
    viewer.add_image(np.zeros((64, 64), np.float32), name="fbp #2")  # the user's own layer
    seen = {}

    def kept():
        for name, (layer, data) in seen.items():
            assert name in viewer.layers and viewer.layers[name] is layer, name
            np.testing.assert_array_equal(layer.data, data, err_msg=name)
        for layer in viewer.layers:
            seen.setdefault(layer.name, (layer, np.array(layer.data)))

    kept()
    _run(session, "fbp")
    kept()
    _run(session, "fbp")
    kept()
    assert {"fbp #1", "fbp #3"} <= _names(viewer)  # #2 is the user's
    assert rec.layer_names == {"estimate": "fbp #3"}
    session.use_prior(tiny_prior)
    _run(session, "dds", nfe=2)
    kept()
    _run(session, "dds", nfe=2, samples=2, design="antithetic")
    kept()
    names = _names(viewer)
    for key in ("samples", "mean", "std", "lower (sample quantile)", "upper (sample quantile)"):
        assert f"dds #2 {key}" in names, key
    assert "dds #1" in names
    assert viewer.layers[-1].name == "dds #2 mean"  # the mean on top after an ensemble
    assert viewer.layers.selection.active is viewer.layers["dds #2 mean"]
    updates = _cancelled_run(session, "dds", nfe=200, samples=2, design="antithetic")
    assert updates[-1].kind == "cancelled"
    kept()
    cancelled = {n for n in _names(viewer) if n.startswith("dds #3")}
    assert cancelled and all(n.endswith("(cancelled)") for n in cancelled), cancelled
    assert "cancelled" in rec.panel.status.text() and rec.panel.progress.value() == 0
    for _ in range(2):
        assert _cancelled_run(session, "admm-tv", iterations=100000)[-1].kind == "cancelled"
        kept()
    assert {"admm-tv #1 (cancelled)", "admm-tv #2 (cancelled)"} <= _names(viewer)


def test_frames_labels_and_what_applies(session):
    """The measurement sits over the image's footprint (it does not widen the world), the viewer
    goes to the slice reconstructed, the training list holds only the user's images, fields are
    labelled apart and z fields show for volumes only; the prior's info says where it was
    trained and where it runs, its validation losses labelled."""
    viewer, rec = session.viewer, session.reconstructor
    meas = viewer.layers["measurement"]
    assert meas.data.shape == (8, 91)
    np.testing.assert_allclose(np.array(meas.data.shape) * meas.scale, (64, 64))
    lo, hi = meas.contrast_limits
    assert lo == pytest.approx(meas.data.min()) and hi == pytest.approx(meas.data.max())
    viewer.dims.set_point(0, 3)
    _run(session, "fbp")
    assert viewer.dims.point[0] == pytest.approx(1)  # slice 1 was reconstructed
    training = [session.prior.layers.item(i).text() for i in range(session.prior.layers.count())]
    assert training == ["ct64"], training
    session.use_prior("ct")
    info = session.prior.info.toPlainText()
    assert "trained: 12092 steps on cpu and cuda" in info, info
    assert "runs here on: cpu" in info
    assert "validation loss by noise level sigma: sigma 0.02" in info
    rec.configure(method="dds")
    assert "z_tv" in rec.params.form.hidden  # one slice: nothing along z
    labels = [w.text() for w in rec.findChildren(QLabel)]
    assert labels.count("batch") == 0 and "slices per adaptation step" in labels
    assert "samples per batch" in labels and "CG iterations per step" in labels
    session.simulate("ct-parallel", layer="ct64", views=8, noise_std=0.05)  # all 4 slices
    assert "z_tv" not in rec.params.form.hidden and "z_tv" in rec.params.form.shown()


def test_bounds_say_which_and_offer_the_calibrated_budget(session):
    """Before an ensemble runs, the widget says which bounds it will show and why; where the
    shipped calibration fits another budget, a button sets that budget."""
    viewer, rec = session.viewer, session.reconstructor
    viewer.open_sample(PLUGIN, "ct")
    session.simulate("ct-parallel", layer="CT lung (HU)", slice=10, views=20, noise_std=0.2)
    session.use_prior("ct")
    rec.configure(method="dds", samples=4, nfe=4, design="antithetic")
    text = rec.bounds_info.text()
    assert text.startswith("Bounds: sample quantiles") and "nfe = 50, not 4" in text, text
    button = rec.use_calibrated_button
    assert button.isVisibleTo(rec) and "nfe 50" in button.text() and "samples 8" in button.text()
    button.click()
    assert rec.budget.form.inputs["nfe"].text() == "50" and rec.samples_box.value() == 8
    assert rec.bounds_info.text().startswith("Bounds: calibrated"), rec.bounds_info.text()
    assert not button.isVisibleTo(rec)
    rec.configure(calibration="none")
    assert "no calibration asked for" in rec.bounds_info.text()
    rec.configure(samples=1)
    assert not rec.bounds_info.isVisibleTo(rec)  # one sample: no bounds


def test_3d_mri_of_the_sample_volume_streams_into_a_3d_layer(make_napari_viewer):
    """The Measurement widget simulates 3D k-space MRI of the whole MRI sample volume (its form
    has no depth field: the volume sets it), and a run streams into a volume layer that napari's
    3D view shows."""
    viewer = make_napari_viewer()
    s = open_viewer(sample=None, viewer=viewer)
    viewer.open_sample(PLUGIN, "mri")
    s.measurement.configure(operator="mri-cartesian-3d")
    assert "depth" not in s.measurement.params.form.inputs
    s.simulate("mri-cartesian-3d", layer="MRI brain", acceleration=4, noise_std=0.005)
    assert viewer.layers["measurement"].data.shape[0] == 23
    s.reconstructor.interval = 0.0
    updates = _run(s, "admm-tv", iterations=6)
    kinds = [u.kind for u in updates]
    assert kinds.count("step") >= 2 and kinds[-1] == "done"
    layer = viewer.layers["admm-tv #1"]
    assert layer.data.shape == (23, 256, 256)
    assert "mri-cartesian-3d" in str(layer.metadata["operator"])
    viewer.dims.ndisplay = 3
    assert viewer.dims.ndisplay == 3 and layer.visible


@pytest.mark.skipif(OPERATORS.get("ct-cone").default_device() == "cuda",
                    reason="CUDA is present: ct-cone runs (tests/test_ct_cone.py)")
def test_cone_beam_without_cuda_says_why_and_publishes_nothing(make_napari_viewer):
    """ct-cone is offered (it runs where a CUDA GPU is), and on a computer without one the
    Measurement widget says why in its info line instead of adding a measurement."""
    viewer = make_napari_viewer()
    s = open_viewer(sample=None, viewer=viewer)
    viewer.open_sample(PLUGIN, "ct")
    m = s.measurement
    m.configure(operator="ct-cone")
    assert "depth" not in m.params.form.inputs and "slice_thickness" in m.params.form.inputs
    m.slice_box.setValue(-1)  # the whole volume
    assert m.simulate() is None
    assert "ct-cone needs a CUDA GPU" in m.info.text()
    assert "measurement" not in viewer.layers

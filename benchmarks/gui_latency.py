"""Main-thread latency of the napari GUI during a Reconstruct run -> results/gui_latency.md.

    xvfb-run -a .venv/bin/python benchmarks/gui_latency.py [--nfe 10] [--threads 1]
    xvfb-run -a .venv/bin/python benchmarks/gui_latency.py --volume [--nfe 4]
        -> results/gui_latency_volume.md: the whole 16-slice CT sample as a volume, shown in
        napari's 3D display while the estimate, samples, mean, std and bounds volumes stream in
    xvfb-run -a .venv/bin/python benchmarks/gui_latency.py --redraw
        -> results/gui_redraw.md: what one redraw of the canvas costs the main thread, in 2D
        and in 3D, with 1, 2 and 5 volume layers of the CT sample shown (no job running), and
        what adding a volume layer in the 3D display costs: the floor under any lateness

A real viewer with the plugin docked (the scripting API), 20-view CT of the CT sample's slice 10
(256 x 256, noise 0.2), the shipped prior ``ct``. A ``QTimer`` fires every 20 ms on the main
thread inside a real Qt event loop; a tick's lateness is the gap to the previous tick minus
20 ms, i.e. how long the main thread was busy (what a user feels as lag). Cases: idle, ADMM-TV,
DDS (one sample) and DDS with 4 antithetic samples, each run by the widget's thread worker.
Also: the time the main thread spends per streamed update (layer data, contrast limits,
metrics label), and the same jobs driven synchronously through the Qt-free generator
(``jobs.recon_updates``) to see whether the thread worker slows torch down.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from qtpy.QtCore import QEventLoop, Qt, QTimer

from napari_patchdiff._qt.scripting import open_viewer
from napari_patchdiff.plugin import jobs

OUT = Path(__file__).resolve().parent / "results" / "gui_latency.md"
PERIOD_MS = 20


class Ticker:
    """Records the main thread's timer ticks."""

    def __init__(self):
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(PERIOD_MS)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))
        self.times: list[float] = []

    def start(self):
        self.times = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> np.ndarray:
        self.timer.stop()
        return np.clip(np.diff(self.times) * 1000 - PERIOD_MS, 0, None)


def run_case(s, ticker, kwargs, activity=False, max_load=0.25) -> dict:
    """One job through the widget (``kwargs`` None: stay idle 3 s) in a real event loop;
    ``activity``: with napari's activity-dock progress bar; ``max_load``: the widget's pacing
    of streamed updates (None: every 0.25 s whatever showing them costs)."""
    loop = QEventLoop()
    costs: list[float] = []
    rec = s.reconstructor
    rec.panel.activity.setChecked(activity)
    rec.panel.max_load = max_load
    handler = type(rec)._on_update.__get__(rec)

    def timed(u):
        t = time.perf_counter()
        handler(u)
        costs.append((time.perf_counter() - t) * 1000)

    rec._on_update = timed
    ticker.start()
    t0 = time.perf_counter()
    if kwargs is None:
        QTimer.singleShot(3000, loop.quit)
    else:
        rec.configure(**kwargs)
        worker = rec.run()
        worker.finished.connect(loop.quit)
    loop.exec()
    wall = time.perf_counter() - t0
    late = ticker.stop()
    del rec._on_update
    return {"wall": wall, "late": late, "costs": np.array(costs or [0.0]),
            "status": rec.panel.status.text()}


def run_sync(s, kwargs) -> float:
    """The same job driven in this thread through the Qt-free generator, no GUI."""
    rec = s.reconstructor
    rec.configure(**kwargs)
    job = rec.snapshot()
    t0 = time.perf_counter()
    for _ in jobs.recon_updates(job, s.reconstructor.state.problem, None,
                                rec.state.load_prior):
        pass
    return time.perf_counter() - t0


def redraw(out: Path, repeats: int = 7) -> None:
    """Main-thread milliseconds of one synchronous repaint of the canvas and of adding a volume
    layer, with the CT sample volume shown as 1, 2 and 5 volume layers (as an ensemble's
    estimate, mean, std and bounds), in 2D and in 3D; no job runs."""
    from qtpy.QtWidgets import QApplication

    s = open_viewer(sample="ct", show=True)
    s.viewer.window.resize(1400, 900)
    app = QApplication.instance()
    canvas = s.viewer.window._qt_viewer.canvas
    native = canvas.native if hasattr(canvas, "native") else canvas._scene_canvas.native
    base = s.viewer.layers[0]
    vol = np.asarray(base.data, dtype=np.float32)

    def settle():
        for _ in range(10):
            app.processEvents()

    def repaint_ms():
        settle()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            native.repaint()
            times.append((time.perf_counter() - t) * 1000)
        return float(np.median(times)), float(np.max(times))

    rows = []
    for ndisplay in (2, 3):
        s.viewer.dims.ndisplay = ndisplay
        extra = []
        for count in (1, 2, 5):
            while len(extra) + 1 < count:
                t = time.perf_counter()
                extra.append(s.viewer.add_image(vol, scale=base.scale, name=f"copy {len(extra)}",
                                                rendering=getattr(base, "rendering", "mip")))
                native.repaint()
                added = (time.perf_counter() - t) * 1000
            med, top = repaint_ms()
            rows.append(f"| {ndisplay}D | {count} | {med:.0f} | {top:.0f} | "
                        f"{'' if count == 1 else f'{added:.0f}'} |")
            print(rows[-1], flush=True)
        for layer in extra:
            s.viewer.layers.remove(layer)
    s.viewer.close()
    text = f"""# One redraw of the napari canvas: what it costs the main thread

Generated by `xvfb-run -a .venv/bin/python benchmarks/gui_latency.py --redraw` (do not edit by
hand), {datetime.date.today().isoformat()}. Machine: {platform.machine()}, {os.cpu_count()}
cores, torch {torch.__version__}, napari under Xvfb (software OpenGL, llvmpipe); other
CPU-heavy processes may have shared the machine.

The CT sample volume (16 slices of 256 x 256, 5 mm) in a 1400 x 900 window, shown as 1, 2 and 5
volume layers (an ensemble streams 5: estimate, mean, std, lower and upper bound), no job
running. *Repaint*: one synchronous `repaint()` of the canvas widget (median / max of
{repeats}, ms): the main thread is blocked that long every time a streamed update changes a
shown layer. *Add*: adding the last volume layer and painting it (ms; in 3D this uploads the
volume texture and compiles its shader).

| display | volume layers shown | repaint median (ms) | repaint max (ms) | add one layer (ms) |
|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
    out.write_text(text)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nfe", type=int, default=10, help="DDS network evaluations")
    ap.add_argument("--iterations", type=int, default=60, help="ADMM-TV iterations")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--volume", action="store_true",
                    help="the whole CT sample volume in the 3D display")
    ap.add_argument("--redraw", action="store_true",
                    help="only the cost of one redraw, 2D and 3D (results/gui_redraw.md)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.redraw:
        return redraw(Path(args.out) if args.out else OUT.with_name("gui_redraw.md"))
    args.out = args.out or str(OUT.with_name("gui_latency_volume.md") if args.volume else OUT)

    s = open_viewer(sample="ct", show=True)
    s.viewer.window.resize(1400, 900)
    s.simulate("ct-parallel", slice=None if args.volume else 10, views=20, noise_std=0.2)
    s.use_prior("ct")
    s.wait()
    if args.volume:
        s.viewer.dims.ndisplay = 3
    admm = dict(method="admm-tv", iterations=args.iterations)
    dds = dict(method="dds", nfe=args.nfe, samples=1)
    fixed = {"max_load": None}
    cases = [
        ("idle (3 s)", None, {}),
        (f"admm-tv, {args.iterations} iterations", admm, {}),
        (f"admm-tv, {args.iterations} iterations, fixed pace", admm, fixed),
        (f"admm-tv, {args.iterations} iterations, fixed pace, activity dock on", admm,
         {**fixed, "activity": True}),
        (f"dds, nfe {args.nfe}, 1 sample", dds, {}),
        (f"dds, nfe {args.nfe}, 1 sample, fixed pace", dds, fixed),
        (f"dds, nfe {args.nfe}, 4 antithetic samples (batch 2)",
         dict(method="dds", nfe=args.nfe, samples=4, design="antithetic", batch=2), {}),
    ]
    if args.volume:  # fewer cases: each runs 16 slices
        cases = [cases[0], cases[1], cases[4],
                 (f"dds, nfe {args.nfe}, 2 antithetic samples",
                  dict(method="dds", nfe=args.nfe, samples=2, design="antithetic"), {})]
    ticker = Ticker()
    run_case(s, ticker, dict(method="dds", nfe=1))  # warm-up: prior load, first layers
    rows, syncs = [], {}
    for label, kwargs, panel in cases:
        r = run_case(s, ticker, kwargs, **panel)
        if kwargs is not None and repr(kwargs) not in syncs:
            syncs[repr(kwargs)] = run_sync(s, kwargs)
        sync = syncs.get(repr(kwargs))
        late, costs = r["late"], r["costs"]
        rows.append(
            f"| {label} | {r['wall']:.1f} | {'' if sync is None else f'{sync:.1f}'} | "
            f"{late.size} | {np.median(late):.1f} | {np.percentile(late, 95):.1f} | "
            f"{np.percentile(late, 99):.1f} | {late.max():.0f} | {(late > 50).sum()} | "
            f"{0 if kwargs is None else costs.size} | {np.median(costs):.1f} / "
            f"{costs.max():.0f} |")
        print(rows[-1], "|", r["status"], flush=True)
    s.viewer.close()

    header = ["case", "worker wall (s)", "sync wall (s)", "ticks", "lateness median (ms)",
              "p95", "p99", "max", "ticks > 50 ms late", "updates", "update cost (ms)"]
    what = ("Job: 20-view parallel-beam CT of the whole CT sample volume (16 slices of 256 x "
            "256, noise 0.2) in napari's 3D display; the widget runs it window by window and "
            "every streamed update replaces whole volume layers (estimate; samples, mean, std, "
            "bounds for an ensemble)." if args.volume else
            "Job: 20-view parallel-beam CT of the CT sample's slice 10 (256 x 256, noise 0.2).")
    text = f"""# Main-thread latency of the napari GUI during reconstructions{
        ' of a volume (3D display)' if args.volume else ''}

Generated by `xvfb-run -a .venv/bin/python benchmarks/gui_latency.py {'--volume ' if args.volume
else ''}--nfe {args.nfe} \\
--iterations {args.iterations} --threads {args.threads}` (do not edit by hand),
{datetime.date.today().isoformat()}. Machine: {platform.machine()}, {os.cpu_count()} cores,
torch {torch.__version__}, {args.threads} torch thread(s), napari under Xvfb (software
OpenGL). Other CPU-heavy processes may have shared the machine: wall times are indicative.

{what} Shipped prior
`ct`, run by the Reconstruct widget on a napari thread worker. Streamed estimates come at most
every 0.25 s, paced so that showing them takes at most 25% of the main thread's time (the
widget's default; "fixed pace": every 0.25 s whatever it costs). napari's activity-dock
progress bar is off unless the case says "activity dock on" (its animated indicator repaints
the window while any job runs).

A 20 ms `QTimer` runs on the main thread in a real Qt event loop; the *lateness* of a tick is
the gap to the previous tick minus 20 ms (how long the main thread was blocked). *Sync*: the
same job driven in the calling thread through the Qt-free generator `jobs.recon_updates`, no
GUI, right after the worker run. *Update cost*: main-thread time to apply one streamed update
to the layers (median / max, ms; the max is the first ensemble update, which creates the
layers).

| {" | ".join(header)} |
|{"---|" * len(header)}
""" + "\n".join(rows) + "\n"
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Issue 31's acceptance run in a real napari window: a 16-slice DDS volume with 4 antithetic
samples, then a second such run; every layer of the first must survive the second unchanged.

    xvfb-run -a python scripts/check_volume_runs.py [--nfe 3]

A few network evaluations (--nfe) keep it to minutes on a CPU; the layer logic does not depend
on the budget. Prints the layers after each run and exits 1 if anything of the first run was
removed or changed.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nfe", type=int, default=3)
    args = ap.parse_args()
    from napari_patchdiff import gui

    s = gui.open_viewer(sample="ct", show=True)
    s.viewer.window._qt_window.resize(1366, 768)
    s.simulate("ct-parallel", views=20, noise_std=0.2)  # all 16 slices
    s.use_prior("ct")
    runs = []
    for k in range(2):
        t0 = time.perf_counter()
        s.reconstruct("dds", nfe=args.nfe, samples=4, design="antithetic", seed=k, wait=True)
        names = dict(s.reconstructor.layer_names)
        runs.append({n: np.asarray(s.viewer.layers[v].data).copy() for n, v in names.items()
                     if v in s.viewer.layers})
        print(f"run {k + 1} ({time.perf_counter() - t0:.0f} s): "
              + ", ".join(f"{n} -> {v} {s.viewer.layers[v].data.shape}"
                          for n, v in names.items() if v in s.viewer.layers), flush=True)
        if k == 0:
            first = names
    ok = True
    for stream in ("samples", "mean", "std", "lower", "upper"):
        name = next((v for n, v in first.items() if n.startswith(stream)), None)
        if name is None or name not in s.viewer.layers:
            print(f"MISSING after the second run: {stream} ({name})")
            ok = False
            continue
        same = np.array_equal(np.asarray(s.viewer.layers[name].data),
                              runs[0][next(n for n in first if first[n] == name)])
        print(f"{name}: kept, {'unchanged' if same else 'CHANGED'}")
        ok &= same
    print("layers:", ", ".join(layer.name for layer in s.viewer.layers))
    print("OK" if ok else "FAILED")
    s.viewer.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

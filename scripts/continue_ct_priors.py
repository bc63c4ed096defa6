"""Continue training the shipped CT priors, patch and whole-image, at equal pixels seen.

    python scripts/continue_ct_priors.py --out DIR --device cuda --minutes 7

How the shipped ``ct`` and ``ct-whole`` priors were trained past their CPU runs: both start from
the shipped weights (``TrainConfig(init=...)``: EMA weights, fresh Adam, the step count continues) and
are stepped in one process, four patch steps (4 x 32,768 pixels) to one whole-image step
(2 x 256 x 256 = 131,072 pixels), so at every stop both have seen the same number of training
pixels ("comparable compute": the network is fully convolutional, FLOPs go with pixels). The run
stops at ``--patch-steps`` or after ``--minutes``, at a whole round, and writes both checkpoints
(``ct.safetensors``, ``ct-whole.safetensors`` with ``.json`` side-cars and training states) into
``--out``. Progress is printed as one line per 100 rounds and at each validation.
"""
from __future__ import annotations

import argparse
import time

import torch

from napari_patchdiff.events import Cancelled, CancelToken
from napari_patchdiff.training import TrainConfig, train, training_volumes

#: the recipes of the shipped priors (their metadata), which TrainConfig(init=...) continues
PATCH = dict(network="cpu", batch=8, pad=24, inference_patch_size=56, seed=0, val_every=500)
WHOLE = dict(network="cpu", kind="whole", batch=2, seed=0, val_every=250)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--minutes", type=float, default=7.0)
    ap.add_argument("--patch-steps", type=int, default=30000, help="target total patch steps")
    ap.add_argument("--init-patch", default="ct")
    ap.add_argument("--init-whole", default="ct-whole")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    vols, modality = training_volumes("ct")
    tokens = CancelToken(), CancelToken()
    common = dict(modality=modality, device=args.device, log_every=1, save_every=0,
                  overwrite=True)
    patch = train(vols, f"{args.out}/ct", TrainConfig(steps=args.patch_steps,
                                                      init=args.init_patch, **PATCH, **common),
                  cancel=tokens[0])
    whole = train(vols, f"{args.out}/ct-whole", TrainConfig(steps=args.patch_steps // 4,
                                                            init=args.init_whole, **WHOLE,
                                                            **common),
                  cancel=tokens[1])
    t0, rounds = time.perf_counter(), 0
    deadline = t0 + 60 * args.minutes
    ev_p = ev_w = None
    while True:
        try:
            for _ in range(4):
                ev_p = next(patch)
                if ev_p.val_losses:
                    print("patch", ev_p.step, _fmt(ev_p.val_losses), flush=True)
            ev_w = next(whole)
            if ev_w.val_losses:
                print("whole", ev_w.step, _fmt(ev_w.val_losses), flush=True)
        except StopIteration:
            break
        rounds += 1
        if rounds % 100 == 0:
            el = time.perf_counter() - t0
            print(f"round {rounds}: patch step {ev_p.step}, whole step {ev_w.step}, "
                  f"{el:.0f} s, {el / rounds * 1000:.0f} ms/round", flush=True)
        if time.perf_counter() > deadline:
            break
    for token, gen, name in ((tokens[0], patch, "patch"), (tokens[1], whole, "whole")):
        token.cancel()
        try:
            next(gen)  # the generator saves its checkpoint and raises Cancelled
        except (Cancelled, StopIteration) as exc:
            print(name, "saved:", exc, flush=True)
    print(f"done: {rounds} rounds in {time.perf_counter() - t0:.0f} s; patch step "
          f"{ev_p.step if ev_p else '?'}, whole step {ev_w.step if ev_w else '?'}", flush=True)


def _fmt(d):
    return {f"{float(k):g}": round(float(v), 5) for k, v in d.items()}


if __name__ == "__main__":
    main()

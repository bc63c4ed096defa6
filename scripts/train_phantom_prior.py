"""Train the shipped phantom prior: the CT patch prior's recipe on synthetic images only.

    python scripts/train_phantom_prior.py --out napari_patchdiff/priors/shipped/phantom \
        --steps 4000 --threads 1 [--resume | --init phantom] [--data phantoms]

The shipped prior was made in three stretches. First 3,400 steps on ``--data phantoms``: 400
random-ellipse bodies and ODL phantoms on the CT normalised scale
(napari_patchdiff/training/phantoms.py, seed 0). Then, with ``--init phantom``, on the default
``--data textured-phantoms``: 4,000 synthetic images, three in four of them textured bodies with
lungs, vessels, bone rims and random-field texture (``phantom_slices(4000, textured=True)``), the
rest drawn as before: to step 5,100 (``--steps 9400``, stopped), then again with ``--init
phantom`` from that prior to step 10,000 (``--steps 12000``, stopped; 66 minutes on two
cores). Every 10th image is held out for validation. The recipe is the shipped ``ct`` prior's
(the ``cpu`` U-Net, patches 16/32/64 with probabilities 0.2/0.3/0.5, 8 patches of 64 per step,
pad 24, inference patch 56), so the two differ only in their training images.
Checkpoints every 100 steps; ``--resume`` continues a stopped run bit-identically; ``--init
phantom`` continues the shipped prior (whose training state is not shipped) from its weights with
a fresh Adam, the step count going on from its last step.
"""
from __future__ import annotations

import argparse

import torch

from napari_patchdiff import api

RECIPE = dict(network="cpu", batch=8, pad=24, inference_patch_size=56, seed=0, val_every=500,
              save_every=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", help="a prior to start from (e.g. phantom, the shipped one)")
    ap.add_argument("--data", default="textured-phantoms",
                    choices=["phantoms", "textured-phantoms"],
                    help="the synthetic training set (training/data.py); the shipped prior: "
                         "400 'phantoms' for 3,400 steps, then 'textured-phantoms' with --init")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    def show(ev) -> None:
        if ev.step % 50 == 0 or ev.val_losses or ev.done:
            val = " ".join(f"{s:g}:{v:.4f}" for s, v in (ev.val_losses or {}).items())
            print(f"step {ev.step}/{ev.total} loss {ev.loss:.4f} {val} [{ev.seconds:.0f} s]",
                  flush=True)

    meta = api.train(args.data, args.out, steps=args.steps, device=args.device,
                     resume=args.resume, overwrite=not args.resume, log_every=10,
                     **({"init": args.init} if args.init else {}),
                     on_event=show, **RECIPE)
    print(f"done: {meta['steps']} steps, final validation {meta.get('final_val_loss')}")


if __name__ == "__main__":
    main()

"""Would a slab prior help on 5 mm slices? A CPU fine-tuning experiment
-> benchmarks/results/slab_feasibility.md.

    python benchmarks/slab_feasibility.py [--minutes 60] [--threads 1] [--save FOLDER]
    python benchmarks/slab_feasibility.py --dds FOLDER [--networks control slab]
                                          [--z-tv 0 0.1] [--task "CT limited 90"]

DiffusionBlend's slab prior sees adjacent slices as channels. Training one from scratch needs a
GPU; this asks the cheaper question first: given the shipped slice prior ``ct``, does a network
that also sees the two neighbouring slices (5 mm away, noisy at the same level) denoise a slice
better than one that does not, after the same fine-tuning?

Two networks start from ``ct``'s weights and are fine-tuned in lockstep on the same batches
(the same patches, noise levels and noise; Adam, lr 1e-4, EMA 0.999 as in ``ct``'s training):

* **slab**: input channels (slice i, slice i - 1, slice i + 1, x, y); the first convolution's
  weights for the neighbours start at zero, so at step 0 it *is* ``ct`` (checked);
* **control**: ``ct``'s own input (slice i, x, y).

Both predict slice i; neighbours get independent noise at the same sigma (as in a sampler,
where every slice is equally noisy). Training: CT training slices only (lung1 all, lung2 0-44;
triplets inside one volume). Scored on whole slices (the padded 304 x 304 canvas in one call):
the validation gap (centres lung2 46-48, neighbours 45-49) and the test volume (centres lung2
51-59, neighbours 50-60), PSNR of the denoised slice at fixed sigmas, for ``ct`` itself, the
control and the slab network (EMA weights). The slab network's gain over the control is the
part a neighbour can explain; the control's gain over ``ct`` is fine-tuning alone.

``--dds FOLDER`` then runs DDS (its defaults, ``z_tv`` as given) on the validation gap with the
saved networks; the slab network sees the neighbours of each slice in the sampler's window.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, ct_slices, machine, record

from napari_patchdiff.priors import load_prior
from napari_patchdiff.priors.network import EDMDenoiser, UNet
from napari_patchdiff.priors.patches import coordinate_grid, pad_image
from napari_patchdiff.training.objective import P_MEAN, P_STD, SIGMA_DATA

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
PATCH, BATCH, LR, EMA = 64, 8, 1e-4, 0.999


def triplets(vol: np.ndarray) -> np.ndarray:
    """(D - 2, 3, H, W): (slice i, slice i - 1, slice i + 1) for the interior slices."""
    return np.stack([vol[1:-1], vol[:-2], vol[2:]], axis=1)


def slab_network(base: EDMDenoiser) -> EDMDenoiser:
    """``base`` with two more input channels (the neighbours) whose weights are zero."""
    cfg = dict(base.net.config, in_channels=base.net.config["in_channels"] + 2)
    net = UNet(**cfg)
    state = base.net.state_dict()
    w = state["conv_in.weight"]  # (C, 3, 3, 3): image, x, y
    state["conv_in.weight"] = torch.cat([w[:, :1], torch.zeros_like(w[:, :2]), w[:, 1:]], 1)
    net.load_state_dict(state)
    return EDMDenoiser(net, base.sigma_data)


def edm_loss(model, x0, noisy_inputs, sigma, coords):
    s = sigma.reshape(-1, 1, 1, 1)
    weight = (s * s + SIGMA_DATA ** 2) / (s * SIGMA_DATA) ** 2
    return (weight * (model(noisy_inputs, sigma, coords) - x0) ** 2).mean()


class SlabDenoiser(torch.nn.Module):
    """The EDM preconditioning of :class:`EDMDenoiser` for a (N, k, h, w) input: the skip
    connection on channel 0 (the slice denoised), ``c_in`` on every image channel."""

    def __init__(self, inner: EDMDenoiser):
        super().__init__()
        self.inner = inner

    def forward(self, x, sigma, coords):
        s = sigma.reshape(-1, 1, 1, 1)
        sd2 = SIGMA_DATA ** 2
        c_skip, c_out = sd2 / (s * s + sd2), s * SIGMA_DATA / torch.sqrt(s * s + sd2)
        c_in = 1.0 / torch.sqrt(s * s + sd2)
        f = self.inner.net(torch.cat([c_in * x, coords], 1), torch.log(sigma) / 4.0)
        return c_skip * x[:, :1] + c_out * f


def batch(data: torch.Tensor, grid: torch.Tensor, g: torch.Generator):
    """Random PATCH x PATCH patches (same place in the three slices), sigmas and noise."""
    n, _, hc, wc = data.shape
    idx = torch.randint(0, n, (BATCH,), generator=g)
    r = torch.randint(0, hc - PATCH + 1, (BATCH,), generator=g)
    c = torch.randint(0, wc - PATCH + 1, (BATCH,), generator=g)
    ar = torch.arange(PATCH)
    rows, cols = (r[:, None] + ar)[:, None, :, None], (c[:, None] + ar)[:, None, None, :]
    x = data[idx[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    coords = grid[0][:, rows[:, 0], cols[:, 0]].permute(1, 0, 2, 3)
    sigma = torch.exp(P_MEAN + P_STD * torch.randn(BATCH, generator=g))
    noise = torch.randn(x.shape, generator=g)
    return x, coords, sigma, noise


@torch.no_grad()
def score(model, slab: bool, data: torch.Tensor, grid: torch.Tensor, pad: int) -> dict:
    """Mean PSNR (dB, over the image, peak 1) of the denoised centre slices at each sigma."""
    g = torch.Generator().manual_seed(7)
    out = {}
    for s in SIGMAS:
        noise = torch.randn(data.shape, generator=g)
        noisy = data + s * noise
        sig = torch.full((data.shape[0],), s)
        coords = grid.expand(data.shape[0], -1, -1, -1)
        d = model(noisy if slab else noisy[:, :1], sig, coords)
        err = (d - data[:, :1])[..., pad:-pad, pad:-pad]
        out[str(s)] = float(np.mean([-10 * math.log10(float(e.pow(2).mean())) for e in err]))
    return out


def slab_prior(prior, model: SlabDenoiser):
    """``prior`` (a PatchPrior) whose denoiser sees each slice's neighbours in the batch (the
    window of a volume; the first and last slice are their own missing neighbour): all 3 B
    images are tiled with the same random shift, and ``model`` denoises each slice's patches
    with its neighbours' patches as channels."""
    import types

    from napari_patchdiff.priors.patches import assembled_denoise

    def denoise(self, x, sigma, generator):
        x, sigma = self._prepare(x, sigma)
        b, _, h, w = x.shape
        stack = torch.stack([x, torch.cat([x[:1], x[:-1]]), torch.cat([x[1:], x[-1:]])], 1)
        if isinstance(sigma, torch.Tensor) and sigma.numel() > 1:
            sigma = sigma.reshape(-1).repeat_interleave(3)

        def fn(patches, sig, coords):
            p = patches.shape[-1]
            k = patches.shape[0] // (3 * b)
            slab = patches.reshape(b, 3, k, p, p).transpose(1, 2).reshape(b * k, 3, p, p)
            out = model(slab.contiguous(memory_format=torch.channels_last),
                        sig.reshape(b, 3, k)[:, 0].reshape(-1),
                        coords.reshape(b, 3, k, 2, p, p)[:, 0].reshape(-1, 2, p, p))
            full = out.new_zeros(b, 3, k, 1, p, p)
            full[:, 0] = out.reshape(b, k, 1, p, p)
            return full.reshape(-1, 1, p, p)

        out = assembled_denoise(fn, stack.reshape(3 * b, 1, h, w), sigma, self.patch_size,
                                self.pad, generator=generator, max_batch=None,
                                trained_size=self.trained_size)
        return out.reshape(b, 3, 1, h, w)[:, 0]

    other = copy.copy(prior)
    other._denoise = types.MethodType(denoise, other)
    return other


def load_networks(folder) -> dict:
    """The ``ct`` prior, and ``control`` and ``slab`` as priors, from ``--save``'s folder."""
    from safetensors.torch import load_file

    ct = load_prior("ct")
    control = copy.deepcopy(ct)
    control.denoiser.net.load_state_dict(load_file(str(Path(folder) / "control.safetensors")))
    base = copy.deepcopy(ct.denoiser).float()
    slab = SlabDenoiser(slab_network(base)).eval().requires_grad_(False)
    slab.inner.net.load_state_dict(load_file(str(Path(folder) / "slab.safetensors")))
    slab.inner.net.to(memory_format=torch.channels_last)
    return {"ct": ct, "control": control, "slab": slab_prior(ct, slab)}


def dds_runs(folder, names, z_tvs, task_key) -> None:
    """DDS on the validation gap (lung2 45-49) with each network -> slab_feasibility_dds.json."""
    from volumes import TASKS, orientations, validation_problem

    from napari_patchdiff import api

    priors = load_networks(folder)
    x, _, problem = validation_problem(next(t for t in TASKS if t.key == task_key))
    for name in names:
        for z in z_tvs:
            t0 = time.perf_counter()
            r = api.solve(problem, "dds", prior=priors[name], z_tv=z)
            out = {**orientations(r.recon, x), "seconds": time.perf_counter() - t0}
            record(RESULTS / "slab_feasibility_dds.json", f"{task_key} | {name} | z_tv {z}", out)
            print(name, z, out, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="a folder to save the two fine-tuned networks in "
                    "(EMA weights, safetensors; not shipped)")
    ap.add_argument("--dds", metavar="FOLDER", help="DDS on the validation gap with the "
                    "networks saved in FOLDER (by --save) instead of training")
    ap.add_argument("--networks", nargs="*", default=["control", "slab"])
    ap.add_argument("--z-tv", nargs="*", type=float, default=[0.0, 0.1],
                    help="the z_tv weights of the DDS runs (default: 0 and the limited-angle "
                    "default 0.1)")
    ap.add_argument("--task", default="CT limited 90")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.dds:
        dds_runs(args.dds, args.networks, args.z_tv, args.task)
        write_table(json.loads((RESULTS / "slab_feasibility.json").read_text()))
        return
    torch.manual_seed(args.seed)

    prior = load_prior("ct", channels_last=False)
    pad = int(prior.pad)
    base = copy.deepcopy(prior.denoiser).float().train().requires_grad_(True)
    lung1, lung2 = ct_slices(list(range(48)), "lung1"), ct_slices(list(range(61)))
    train = np.concatenate([triplets(lung1), triplets(lung2[:45])])
    canvas = lambda a: pad_image(torch.from_numpy(a), pad)
    train_t = canvas(train)
    val_t, test_t = canvas(triplets(lung2[45:50])), canvas(triplets(lung2[50:61]))
    grid = coordinate_grid(*train_t.shape[-2:])

    control = SlabDenoiser(base)
    slab = SlabDenoiser(slab_network(base))
    models = {"control": control, "slab": slab}
    emas = {k: copy.deepcopy(m).eval() for k, m in models.items()}
    opts = {k: torch.optim.Adam(m.parameters(), lr=LR) for k, m in models.items()}
    ct_ref = copy.deepcopy(control).eval()

    with torch.no_grad():  # the slab network starts as ct itself
        x, coords, sigma, noise = batch(val_t, grid, torch.Generator().manual_seed(1))
        ref = ct_ref(x[:, :1] + sigma.reshape(-1, 1, 1, 1) * noise[:, :1], sigma, coords)
        same = emas["slab"](x + sigma.reshape(-1, 1, 1, 1) * noise, sigma, coords)
        assert torch.allclose(ref, same, atol=1e-5), float((ref - same).abs().max())

    g = torch.Generator().manual_seed(args.seed)
    t0, step, losses = time.perf_counter(), 0, {k: [] for k in models}
    log = []
    while time.perf_counter() - t0 < args.minutes * 60:
        x, coords, sigma, noise = batch(train_t, grid, g)
        noisy = x + sigma.reshape(-1, 1, 1, 1) * noise
        for k, m in models.items():
            loss = edm_loss(m, x[:, :1], noisy if k == "slab" else noisy[:, :1], sigma, coords)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
            losses[k].append(float(loss.detach()))
            with torch.no_grad():
                for pe, p in zip(emas[k].parameters(), m.parameters()):
                    pe.lerp_(p, 1.0 - EMA)
        step += 1
        if step % 100 == 0:
            row = {"step": step, "minutes": (time.perf_counter() - t0) / 60,
                   **{f"loss_{k}": float(np.mean(v[-100:])) for k, v in losses.items()}}
            log.append(row)
            print(json.dumps(row), flush=True)

    results = {"steps": step, "minutes": (time.perf_counter() - t0) / 60, "log": log,
               "machine": machine(), "scores": {}}
    for split, data in (("validation (lung2 46-48)", val_t), ("test (lung2 51-59)", test_t)):
        results["scores"][split] = {
            "ct": score(ct_ref, False, data, grid, pad),
            "control": score(emas["control"], False, data, grid, pad),
            "slab": score(emas["slab"], True, data, grid, pad)}
        print(split, json.dumps(results["scores"][split]), flush=True)
    if args.save:
        from safetensors.torch import save_file

        Path(args.save).mkdir(parents=True, exist_ok=True)
        for k, m in emas.items():
            save_file(m.inner.net.state_dict(), str(Path(args.save) / f"{k}.safetensors"))
    (RESULTS / "slab_feasibility.json").write_text(json.dumps(results, indent=1) + "\n")
    write_table(results)


def write_table(r: dict) -> None:
    lines = ["# Would a slab prior help on 5 mm slices? (CPU fine-tuning experiment)", "",
             (f"Generated by `python benchmarks/slab_feasibility.py --minutes "
             f"{r['minutes']:.0f} --save FOLDER`, then `--dds FOLDER --networks control` and "
             "`--networks slab`, each also with `--task \"CT limited 120\"` (do not edit by "
             "hand); raw numbers in slab_feasibility.json and "
             f"slab_feasibility_dds.json. Machine: {r['machine']}."), "",
             (f"Both networks start from the shipped prior `ct` and were fine-tuned in lockstep "
             f"on the same {r['steps']} batches ({BATCH} patches of {PATCH} x {PATCH}, "
             f"{r['minutes']:.0f} minutes on one CPU thread beside other jobs): *slab* also sees "
             "slices i - 1 and i + 1 (5 mm away, equally noisy), *control* sees slice i only. "
             "Neither is shipped."), "",
             "## Denoising", "",
             ("PSNR (dB) of slice i denoised in one call at noise level sigma (whole slices, EMA "
             "weights)."), ""]
    for split, rows in r["scores"].items():
        lines += [f"### {split}", "", "| sigma | ct | control | slab | slab - control |",
                  "|---|---|---|---|---|"]
        for s in SIGMAS:
            a, b, c = rows["ct"][str(s)], rows["control"][str(s)], rows["slab"][str(s)]
            lines.append(f"| {s} | {a:.2f} | {b:.2f} | {c:.2f} | {c - b:+.2f} |")
        lines.append("")
    dds_path = RESULTS / "slab_feasibility_dds.json"
    if dds_path.exists():
        runs = json.loads(dds_path.read_text())
        tuned = json.loads((RESULTS / "volumes_ztv_tuning.json").read_text())
        lines += ["## DDS on the validation gap", "",
                  ("lung2 45-49 (5 slices, 5 mm, never trained on), 60 views over 90 or 120 "
                  "degrees, noise 0.2, DDS with its defaults (50 evaluations) but `z_tv` as "
                  "given; PSNR (dB) axial / coronal / sagittal. The slab network sees each "
                  "slice's neighbours in the window (the end slices are their own missing "
                  "neighbour). The `ct` rows are the same runs in volumes_ztv_tuning.json."), "",
                  "| task | network | z_tv | axial | coronal | sagittal | s |",
                  "|---|---|---|---|---|---|---|"]
        keys = ("psnr_axial", "psnr_coronal", "psnr_sagittal")
        for task in sorted({k.split(" | ")[0] for k in runs}):
            for z in sorted({k.split(" | ")[2] for k in runs if k.startswith(task)}):
                ref = tuned.get(f"{task} | {float(z.split()[1])}")
                if ref:
                    lines.append(f"| {task} | ct | {z.split()[1]} | "
                                 + " | ".join(f"{ref[k]:.2f}" for k in keys) + " | |")
                for name in ("control", "slab"):
                    v = runs.get(f"{task} | {name} | {z}")
                    if v:
                        lines.append(f"| {task} | {name} | {z.split()[1]} | "
                                     + " | ".join(f"{v[k]:.2f}" for k in keys)
                                     + f" | {v['seconds']:.0f} |")
        lines.append("")
    (RESULTS / "slab_feasibility.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()

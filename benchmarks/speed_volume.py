"""Volume throughput, ``speed.py --throughput`` -> results/speed_volume.md / .json.

    python benchmarks/speed.py --throughput 16 64 [--nfe N] [--method dds pnp-admm]
        [--precision float32 auto] [--batch B ...] [--max-batch M ...] [--threads 2]
        [--device cpu] [--output NAME]

One row per method, precision, window, patches per network call and depth: a D-slice volume
(lung2 has 61 slices: the test slices 50-60 mirrored back and forth, 50, ..., 60, 59, ..., 50,
51, ..., see ``speed.volume_slices``; 20-view parallel CT, noise 0.2, spacing 5 mm, the
method's defaults) runs in its own process (``speed.py --child M --volume D``), as the volumes
of ``--compare`` do. Each row has the wall seconds of ``api.solve``, slices per second, seconds
per network evaluation per slice (wall / (evaluations per slice x D); with ``--nfe`` the
comparable figure, since the PSNR is then not that of the defaults), the windows of slices the
run went through (recon/volumes.py ``VOLUME_BATCH`` kept slices per window plus the context
slices of a method coupling slices along z), the network's achieved GFLOP/s (its FLOPs on every
computed slice, context included, over the wall time), the peak memory (CPU: the child's peak
resident set, ``getrusage(RUSAGE_SELF).ru_maxrss``; CUDA: ``torch.cuda.max_memory_allocated``)
and the PSNR of the volume.

Measured in the same run, in this process with the same threads: the float32 2048 x 2048
matrix-multiply GFLOP/s (``matmul_gflops``, the yardstick that makes numbers of two machines
comparable as ratios) and the network's GFLOP per evaluation of one 256 x 256 slice (torch's
FLOP counter). On CUDA also the device's peak for the precision a row ran at: measured here (an
8192 x 8192 matrix multiply in that precision) and NVIDIA's datasheet figure (dense, in
:data:`DATASHEET_TFLOPS`), and the row's share of each.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import RESULTS, ct_slices, machine
from speed import HERE, matmul_gflops, volume_slices
from napari_patchdiff.priors import load_prior

#: NVIDIA's datasheet peaks in TFLOP/s, dense (the datasheets give the Tensor Core figures with
#: 2:4 sparsity; these are half of them): H100 SXM5 / PCIe / NVL (H100 datasheet), H200 SXM /
#: NVL (H200 datasheet). "tf32": float32 convolutions and products on the Tensor Cores, which
#: PyTorch uses for cuDNN convolutions by default (torch.backends.cudnn.allow_tf32).
DATASHEET_TFLOPS = {
    "H100 SXM": {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.5},
    "H100 PCIe": {"float32": 51.0, "tf32": 378.0, "bfloat16": 756.5},
    "H100 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5},
    "H200 SXM": {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.5},
    "H200 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5},
}


def datasheet_model(gpu_name: str) -> str | None:
    """The :data:`DATASHEET_TFLOPS` entry of a CUDA device name ("NVIDIA H100 80GB HBM3" is
    the SXM5 board, "NVIDIA H200" the SXM one), or None for other GPUs."""
    name = gpu_name.upper()
    for chip in ("H200", "H100"):
        if chip in name:
            form = "NVL" if "NVL" in name else "PCIe" if "PCIE" in name else "SXM"
            return f"{chip} {form}"
    return None


def compute_kind(precision: str | None, device) -> str:
    """What the network's convolutions run in: "bfloat16", "tf32" (float32 on a CUDA device
    with cuDNN's TF32 on, PyTorch's default) or "float32"."""
    if precision == "bfloat16":
        return "bfloat16"
    if torch.device(device).type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "float32"


def measured_peak(device, kind: str, n: int = 8192, repeats: int = 20) -> float:
    """GFLOP/s of an ``n x n`` matrix multiply in ``kind`` on a CUDA ``device``: the peak this
    GPU reaches in that precision, measured in this run."""
    dtype = torch.bfloat16 if kind == "bfloat16" else torch.float32
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"
    try:
        return matmul_gflops(device, n, repeats, dtype)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def slice_gflop(prior_name: str, device) -> float:
    """The network's GFLOP in one evaluation of one 256 x 256 slice (torch's FLOP counter)."""
    prior = load_prior(prior_name, device=device)
    x = torch.as_tensor(ct_slices([55]))[:, None].to(device)
    x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        prior.denoise(x, 0.1, generator=torch.Generator().manual_seed(0))
    return counter.get_total_flops() / 1e9


def run_row(args, method: str, depth: int, precision, batch, max_batch) -> dict:
    """One volume run in its own process (``speed.py --child``): its JSON line, or
    ``{"error": ...}`` (the last line of its stderr) when it failed, so later rows still run."""
    cmd = [sys.executable, str(HERE / "speed.py"), "--child", method, "--volume", str(depth),
           "--threads", str(args.threads), "--device", args.device, "--prior", args.prior]
    for flag, value in (("--precision", precision), ("--batch", batch),
                        ("--max-batch", max_batch), ("--nfe", args.nfe)):
        if value is not None:
            cmd += [flag, str(value)]
    done = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return {"error": f"exit {done.returncode}: {last[:200]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _derived(res: dict, depth: int, gflop: float, mm: float, peaks: dict, device) -> dict:
    """The row's rates from the child's JSON line and this run's yardsticks."""
    steps = res["nfe_per_slice"]
    net = gflop * steps * res["computed_slices"] / res["seconds"]
    out = {"slices_per_s": depth / res["seconds"],
           "s_per_eval_per_slice": res["seconds"] / (steps * depth),
           "network_gflops": net, "network_over_matmul": net / mm,
           "kind": compute_kind(res["precision"], device),
           "peak_memory_gib": res["peak_gib"] if "peak_gib" in res else res["peak_rss_gib"]}
    for key, rates in peaks.items():  # "measured" / "datasheet": GFLOP/s by kind
        if rates.get(out["kind"]):
            out[f"share_of_{key}_peak"] = net / rates[out["kind"]]
    return out


def _peaks(device, kinds) -> dict:
    """On CUDA: the measured and the datasheet peak (GFLOP/s) of each kind; else {}."""
    if torch.device(device).type != "cuda":
        return {}
    model = datasheet_model(torch.cuda.get_device_name(torch.device(device)))
    sheet = DATASHEET_TFLOPS.get(model, {})
    out = {"measured": {k: measured_peak(device, k) for k in kinds},
           "datasheet": {k: 1e3 * sheet[k] for k in kinds if k in sheet},
           "datasheet_model": model}
    torch.cuda.empty_cache()  # the rows' processes get the memory back
    return out


def throughput(args) -> None:
    """The table: every row in its own process, the yardsticks measured here first."""
    from speed import DIFFUSION

    if set(args.method) - set(DIFFUSION):
        raise SystemExit(f"--throughput times the methods with a prior: {', '.join(DIFFUSION)}")
    torch.set_num_threads(args.threads)  # as the children: machine() reports it
    device = torch.device(args.device)
    mm = matmul_gflops(device)
    gflop = slice_gflop(args.prior, device)
    cuda = device.type == "cuda"
    kinds = sorted({compute_kind(p, device) for p in ("float32", "bfloat16")}) if cuda else []
    peaks = _peaks(device, kinds)
    model = peaks.pop("datasheet_model", None)
    stem = args.output or ("speed_volume" + ("_cuda" if cuda else ""))
    out = {"machine": machine(device), "device": str(device), "threads": args.threads,
           "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
           "prior": args.prior, "nfe": args.nfe, "matmul_gflops": mm,
           "matmul_gflops_after": None, "network_gflop_per_slice_eval": gflop,
           "peaks_gflops": peaks, "datasheet_model": model, "rows": []}
    for method, prec, batch, mb, depth in itertools.product(
            args.method, args.precision or [None], args.batch or [None],
            args.max_batch or [None], args.throughput):
        res = run_row(args, method, depth, prec, batch, mb)
        row = {"method": method, "depth": depth, "requested_precision": prec, **res}
        if "error" not in res:
            row.update(_derived(res, depth, gflop, mm, peaks, device))
        out["rows"].append(row)
        print(json.dumps(row, default=str), flush=True)
        _write(stem, out)  # after every row: a run cut short keeps its rows
    out["matmul_gflops_after"] = matmul_gflops(device)
    print("\n".join(_write(stem, out)))


def _write(stem: str, out: dict) -> list[str]:
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    lines = table(out)
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return lines


def _slices_text(rows) -> str:
    deepest = max(r["depth"] for r in rows)
    first = volume_slices(deepest)
    if deepest <= 11:
        return f"lung2 {first[0]}-{first[-1]} (the first D of them)"
    return ("the lung2 test slices 50-60 mirrored back and forth to the depth (50, 51, ..., 60, "
            "59, ..., 50, 51, ...; `volume_slices` in speed.py), the first D of them")


def _window_text(r) -> str:
    if not r.get("windows"):
        return "?"
    if r["windows"] == 1:
        return f"one window of {r['depth']}"
    return (f"{r['windows']} x {r['batch']} + {r['overlap']}+{r['overlap']} context "
            f"({r['computed_slices']} computed)")


def table(out: dict) -> list[str]:
    """The Markdown table of a throughput run (``out`` as written to the JSON file)."""
    rows = out["rows"]
    peaks = out["peaks_gflops"]
    nfe_note = (f" **{out['nfe']} network evaluations per slice** (`--nfe {out['nfe']}`) "
                "instead of the method's default, so the PSNR is not that of the defaults; "
                "seconds per evaluation per slice is the comparable figure." if out["nfe"] else "")
    lines = ["# Volume throughput", "",
             f"Generated by `{out['command']}` (do not edit by hand).",
             f"Machine: {out['machine']}; device {out['device']}. Prior `{out['prior']}`; "
             f"20-view parallel CT, noise 0.2, each method's defaults; slices: "
             f"{_slices_text(rows)}. Each row ran in its own process.{nfe_note}", "",
             f"Yardsticks measured in the same run: float32 2048 x 2048 matrix multiply "
             f"{out['matmul_gflops']:.1f} GFLOP/s before the rows, "
             + (f"{out['matmul_gflops_after']:.1f} after" if out["matmul_gflops_after"] else
                "not after (the run stopped before its end, or is still running)")
             + f"; network GFLOP per evaluation of one 256 x 256 slice "
             f"{out['network_gflop_per_slice_eval']:.1f} (torch's FLOP counter)."]
    if peaks:
        model = out["datasheet_model"] or "not in the table"
        meas = ", ".join(f"{k} {v / 1e3:.1f}" for k, v in peaks["measured"].items())
        sheet = ", ".join(f"{k} {v / 1e3:.1f}" for k, v in peaks["datasheet"].items()) or "none"
        lines += ["", f"Peaks (TFLOP/s): measured here, 8192 x 8192 matrix multiply: {meas}; "
                      f"NVIDIA datasheet, dense ({model}): {sheet}. float32 rows run their "
                      "convolutions in TF32 (cuDNN's default in PyTorch)."]
    head = ("| method | precision | slices | windows | patches per call | evaluations per slice "
            "| wall s | slices/s | s per evaluation per slice | network GFLOP/s | network / "
            "matmul | peak memory GiB | PSNR dB |")
    sep = "|---" * 13 + "|"
    if peaks:
        head += " share of measured peak | share of datasheet peak |"
        sep += "---|---|"
    lines += ["", head, sep]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['requested_precision'] or 'default'} | "
                         f"{r['depth']} | failed: {r['error'].replace('|', '/')} |")
            continue
        prec = f"{r['requested_precision'] or 'default'} -> {r['precision']}"
        cells = [r["method"], prec, str(r["depth"]), _window_text(r),
                 str(r.get("max_batch") or "all"), str(r["nfe_per_slice"]),
                 f"{r['seconds']:.1f}", f"{r['slices_per_s']:.3f}",
                 f"{r['s_per_eval_per_slice']:.4f}", f"{r['network_gflops']:.1f}",
                 f"{r['network_over_matmul']:.2f}", f"{r['peak_memory_gib']:.2f}",
                 f"{r['psnr']:.2f}"]
        if peaks:
            cells += [f"{100 * r[k]:.1f}%" if k in r else "-" for k in
                      ("share_of_measured_peak", "share_of_datasheet_peak")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Seconds per evaluation per slice: wall / (evaluations per slice x slices); "
              "network GFLOP/s: the network's FLOPs on every computed slice (context slices "
              "included) over the wall time; network / matmul: that over the float32 "
              "matrix-multiply rate before the rows. Peak memory: "
              + ("torch.cuda.max_memory_allocated of the row's process."
                 if peaks or out["device"].startswith("cuda")
                 else "the row's process's peak resident set (ru_maxrss).")]
    return lines

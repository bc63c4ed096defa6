"""Prior checkpoints: safetensors weights + JSON metadata; loading never executes code.

Files written by :func:`save_checkpoint` for ``out = "priors/ct"`` (any suffix is dropped):

``ct.safetensors``
    The EMA weights of the :class:`~napari_patchdiff.priors.network.EDMDenoiser` (float32), with
    the metadata JSON also stored in the safetensors header under the key ``"patchdiff"``.
``ct.json``
    The same metadata, human-readable (what ``napari-patchdiff info`` prints).
``ct.state.safetensors`` (training only, :func:`save_training_state`)
    Raw (non-EMA) weights, Adam moments and training counters, for ``resume=True``.

The header copy is authoritative; the JSON side-car is used when a header has none. Metadata
keys (``format_version`` 1)::

    format, format_version, kind ('patch' | 'whole'), architecture {channels, blocks_per_level,
    emb_dim, dropout, attention, in_channels, out_channels}, config_name, sigma_data,
    patch_sizes, patch_probs, batch_multipliers, inference_patch_size, pad, image_size [H, W],
    canvas_size [Hc, Wc], coordinates (the normalisation, see patches.COORDINATE_NORMALISATION),
    modality ('ct' | 'mri' | 'unit'), intensity {normalisation, scales}, training_data
    [{name, slices}], validation_data [{name, slices}], steps, wall_time_s, device, ema_decay,
    lr, seed, final_val_loss {sigma: loss}, torch_version, created.

Loading uses ``safetensors`` (a pure tensor container) and ``json``. A ``.pt`` file is read only
when it is named explicitly (``x.pt``; ``x`` or ``x.safetensors`` never falls back to it), only
with torch >= 2.6 (whose ``weights_only`` unpickler closed a code-execution hole of earlier
versions) and only with ``torch.load(weights_only=True)``; a file that holds anything but
tensors is refused without unpickling it. Every failure is re-raised as
:class:`~napari_patchdiff.errors.InputError` naming the file and what is wrong.

Files are written through a temporary file in the same folder and renamed over the target
(atomic), with the mode a newly created file would get (``0o666 & ~umask``).

Kept as one module: it is the one file format of a prior, written and read in one place so
that the two cannot drift apart (the metadata keys above, their validation, the safe loading
rules and the training state that sits beside the weights).
"""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io.files import atomic_output
from .network import EDMDenoiser, build_unet, unet_config

__all__ = [
    "FORMAT", "FORMAT_VERSION", "checkpoint_paths", "save_checkpoint", "read_metadata",
    "load_checkpoint", "check_compatible", "save_training_state", "load_training_state",
    "validate_metadata",
]

FORMAT = "napari-patchdiff-prior"
FORMAT_VERSION = 1
_HEADER_KEY = "patchdiff"
_REQUIRED = ("format_version", "kind", "architecture", "pad", "image_size", "canvas_size",
             "modality", "coordinates")
#: the first torch whose ``torch.load(weights_only=True)`` is trusted with ``.pt`` files
PT_MIN_TORCH = (2, 6)


def checkpoint_paths(path) -> dict[str, Path]:
    """The files belonging to a checkpoint ``path`` (with or without a suffix)."""
    p = Path(path)
    name = p.name
    for suf in (".state.safetensors", ".safetensors", ".json", ".pt"):
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    stem = p.with_name(name)
    return {
        "weights": stem.with_name(name + ".safetensors"),
        "pt": stem.with_name(name + ".pt"),
        "json": stem.with_name(name + ".json"),
        "state": stem.with_name(name + ".state.safetensors"),
    }


def _atomic_write(path: Path, write) -> None:
    """``write(tmp)`` to a fresh temporary file next to ``path``, flush it to disk and move it
    over ``path`` with the mode a new file would get (``0o666 & ~umask``; the temporary file
    is created 0600), see :func:`~napari_patchdiff.io.files.atomic_output`. On any failure
    (Ctrl-C included) the temporary file is removed and ``path`` is untouched."""
    # absolute(): a leading "~" stays a folder name here, as the readers below take it
    with atomic_output(path.absolute()) as tmp:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


def save_checkpoint(path, model, metadata: dict[str, Any]) -> Path:
    """Write the weights (``model``: a module or a state dict) and metadata; returns the
    ``.safetensors`` path. Writes are atomic (temporary file + rename)."""
    from safetensors.torch import save_file

    paths = checkpoint_paths(path)
    state = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    meta = _jsonable({"format": FORMAT, "format_version": FORMAT_VERSION, **metadata})
    validate_metadata(meta, paths["weights"])
    text = json.dumps(meta, indent=1, sort_keys=True)
    _atomic_write(paths["weights"], lambda t: save_file(tensors, str(t),
                                                        metadata={_HEADER_KEY: text}))
    _atomic_write(paths["json"], lambda t: t.write_text(text + "\n"))
    return paths["weights"]


def validate_metadata(meta, where="checkpoint") -> dict:
    if not isinstance(meta, dict):
        raise InputError(f"{where}: metadata is not a JSON object")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise InputError(f"{where}: metadata lacks {', '.join(missing)}; not a napari-patchdiff "
                         "prior checkpoint (or written by an incompatible version)")
    if meta.get("format", FORMAT) != FORMAT:
        raise InputError(f"{where}: metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    v = meta["format_version"]
    if not isinstance(v, int) or v < 1 or v > FORMAT_VERSION:
        raise InputError(f"{where}: checkpoint format version {v!r} is not supported "
                         f"(this version reads 1..{FORMAT_VERSION})")
    if meta["kind"] not in ("patch", "whole"):
        raise InputError(f"{where}: kind must be 'patch' or 'whole', got {meta['kind']!r}")
    arch = meta["architecture"]
    if not isinstance(arch, dict) or "channels" not in arch or "blocks_per_level" not in arch:
        raise InputError(f"{where}: invalid architecture entry {arch!r}")
    for key in ("image_size", "canvas_size"):
        val = meta[key]
        if not (isinstance(val, list) and len(val) == 2 and all(isinstance(n, int) for n in val)):
            raise InputError(f"{where}: {key} must be [H, W], got {val!r}")
    if not isinstance(meta["pad"], int) or meta["pad"] < 0:
        raise InputError(f"{where}: invalid pad {meta['pad']!r}")
    if [n + 2 * meta["pad"] for n in meta["image_size"]] != meta["canvas_size"]:
        raise InputError(f"{where}: canvas_size {meta['canvas_size']} is not image_size "
                         f"{meta['image_size']} + 2 * pad {meta['pad']}")
    return meta


def _torch_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _convert_hint(path: Path) -> str:
    stem = checkpoint_paths(path)
    return (f"convert it to safetensors: save its state dict with "
            f"safetensors.torch.save_file(state_dict, '{stem['weights'].name}') and keep "
            f"{stem['json'].name} next to it")


def _check_pt_allowed(path: Path) -> None:
    """Refuse ``.pt`` files on a torch whose ``weights_only`` loader is not safe."""
    if _torch_version() < PT_MIN_TORCH:
        need = ".".join(map(str, PT_MIN_TORCH))
        raise InputError(f"{path}: .pt checkpoints are read only with torch >= {need} (this is "
                         f"torch {torch.__version__}, whose loader of .pt files is not safe); "
                         + _convert_hint(path))


def _resolve_weights(path) -> Path:
    """The weights file of ``path``: its ``.safetensors`` file, or a ``.pt`` file only when
    ``path`` names that exact file (and torch is recent enough to read it safely)."""
    p = Path(path)
    paths = checkpoint_paths(p)
    if p.suffix == ".pt" and p.is_file():
        _check_pt_allowed(p)
        return p
    if paths["weights"].is_file():
        return paths["weights"]
    if p.is_dir():
        raise InputError(f"{p} is a folder, not a prior checkpoint (.safetensors)")
    if p.is_file() and p.suffix != ".json":  # random.bin: not "random.bin.safetensors not found"
        raise InputError(f"{p} exists but is not a .safetensors checkpoint (a prior is read "
                         f"from NAME.safetensors, with NAME.json beside it); name the "
                         f".safetensors file")
    hint = ""
    if paths["pt"].is_file():
        hint = (f" ({paths['pt'].name} is there, but .pt files are read only when named "
                f"explicitly; better, {_convert_hint(paths['pt'])})")
    raise InputError(f"prior checkpoint not found: {paths['weights']}{hint}")


def _read_header(path: Path) -> dict | None:
    """The metadata stored in a safetensors header (None if absent)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # SafetensorError, OSError, ...
        raise InputError(f"cannot read prior checkpoint {path}: corrupt or truncated safetensors "
                         f"file ({exc})") from None
    if _HEADER_KEY not in header:
        return None
    try:
        return json.loads(header[_HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: metadata in the file header is not valid JSON ({exc})") from None


def read_metadata(path) -> dict:
    """The validated metadata of a checkpoint (header first, then the JSON side-car)."""
    weights = _resolve_weights(path)
    meta = _read_header(weights) if weights.suffix == ".safetensors" else None
    if meta is None:
        side = checkpoint_paths(weights)["json"]
        if not side.is_file():
            raise InputError(f"{weights}: no metadata (neither in the file header nor a side-car "
                             f"{side.name}); cannot tell the prior's conventions")
        try:
            meta = json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{side}: metadata is not valid JSON ({exc})") from None
    return validate_metadata(meta, weights)


def _load_pt(path: Path):
    """``torch.load(weights_only=True)`` with torch's messages replaced: they advise turning
    the guard off (``weights_only=False``), which would run whatever the file pickled."""
    _check_pt_allowed(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = ("it is corrupt, or holds pickled Python objects besides tensors, which are "
                  "never unpickled (that could run code)")
    except Exception as exc:  # RuntimeError (not a torch file), OSError, EOFError, ...
        text = " ".join(str(exc).split())
        reason = ("not a readable torch file" if "weights_only" in text or not text
                  else f"{type(exc).__name__}: {text[:200]}")
    raise InputError(f"cannot read prior checkpoint {path}: {reason}; if you trust its source, "
                     + _convert_hint(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".pt":
        obj = _load_pt(path)
        if isinstance(obj, dict) and "state_dict" in obj:
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise InputError(f"{path}: expected a dict of tensors")
        return obj
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise InputError(f"cannot read prior checkpoint {path}: corrupt or truncated safetensors "
                         f"file ({exc})") from None


def _check_state(model: torch.nn.Module, state: dict, where) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected tensors (e.g. {extra[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {k}: "
                         f"{tuple(state[k].shape)} vs {tuple(expected[k])})")
        raise InputError(f"{where}: weights do not match the architecture in the metadata: "
                         + "; ".join(parts))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(f"{where}: weights contain NaN/Inf (e.g. {bad[0]})")


def build_denoiser(meta: dict) -> EDMDenoiser:
    try:
        net = build_unet(unet_config(meta["architecture"]))
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"invalid architecture in the metadata: {exc}") from None
    return EDMDenoiser(net, sigma_data=float(meta.get("sigma_data", 0.5)))


def load_checkpoint(path, device="cpu") -> tuple[EDMDenoiser, dict]:
    """``(denoiser, metadata)``; the denoiser holds the EMA weights, in eval mode, on ``device``."""
    weights = _resolve_weights(path)
    meta = read_metadata(weights)
    state = _load_tensors(weights)
    model = build_denoiser(meta)
    _check_state(model, state, weights)
    model.load_state_dict(state)
    return model.eval().to(device), meta


#: coordinate conventions of checkpoints this version reproduces (and maps to other sizes)
KNOWN_COORDINATES = ("canvas-linear-v1",)


def check_compatible(metadata: dict, image_shape, modality: str | None, pad: int | None = None,
                     patch_size: int | None = None) -> dict[str, Any]:
    """Refuse to use a prior outside the conventions it was trained with (InputError); any
    image size is accepted.

    Checks the modality (intensity scale), the pad, the coordinate convention (one this version
    computes, :data:`KNOWN_COORDINATES`), and for patch priors that the patch size lies within
    the trained range, is a multiple of the network's downsampling factor and fits the canvas
    of the image (so images down to ``patch size - 2 pad`` pixels a side). An image of another
    size than the training images gets the coordinate channels of
    :data:`~napari_patchdiff.priors.patches.COORDINATE_MAPPING`.

    Returns how the prior sees such images: ``{"image_size", "trained_image_size",
    "coordinates" (the map's name), "pixel_scale" ((H0 - 1) / (H - 1), (W0 - 1) / (W - 1):
    training pixels per image pixel)}``.
    """
    from .patches import COORDINATE_MAPPING

    where = f"prior {metadata.get('name') or metadata.get('config_name') or ''}".rstrip()
    m_mod = metadata.get("modality")
    if modality is not None and m_mod not in (None, "unit") and modality != m_mod:
        raise InputError(f"{where} was trained on {m_mod} images (scale: "
                         f"{metadata.get('intensity', {}).get('normalisation', '?')}) and cannot "
                         f"be used for {modality} data")
    m_pad = int(metadata["pad"])
    if pad is not None and int(pad) != m_pad:
        raise InputError(f"{where} was trained with pad {m_pad}; pad {pad} would change the "
                         f"coordinate channels (canvas {metadata['canvas_size']}); use pad={m_pad}")
    coords = metadata.get("coordinates")
    convention = coords.get("name") if isinstance(coords, dict) else coords
    if convention is not None and convention not in KNOWN_COORDINATES:
        raise InputError(f"{where} uses the coordinate convention {convention!r}, which this "
                         f"version does not compute (it knows {', '.join(KNOWN_COORDINATES)}); "
                         f"use the napari-patchdiff version that trained it")
    shape = tuple(int(n) for n in tuple(image_shape)[-2:])
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"{where}: invalid image shape {tuple(image_shape)}")
    canvas = tuple(n + 2 * m_pad for n in shape)
    if patch_size is not None and metadata["kind"] == "patch":
        p = int(patch_size)
        sizes = [int(s) for s in metadata.get("patch_sizes") or [p]]
        mult = 2 ** (len(metadata["architecture"]["channels"]) - 1)
        if p % mult:
            raise InputError(f"patch size {p} must be a multiple of {mult} for this network")
        if not min(sizes) <= p <= max(sizes):
            raise InputError(f"{where} was trained on patch sizes {sizes}; patch size {p} is "
                             f"outside [{min(sizes)}, {max(sizes)}]")
        if p > min(canvas):
            raise InputError(f"patch size {p} exceeds the canvas {canvas} of a {shape} image "
                             f"with pad {m_pad}: the image must be at least "
                             f"{max(1, p - 2 * m_pad)} pixels a side for this prior")
    trained = tuple(int(n) for n in metadata["image_size"])
    same = shape == trained
    return {"image_size": list(shape), "trained_image_size": list(trained),
            "coordinates": (convention or KNOWN_COORDINATES[0]) if same
            else COORDINATE_MAPPING["name"],
            "pixel_scale": [round((t - 1) / max(n - 1, 1), 6) for t, n in zip(trained, shape)]}


# ----------------------------------------------------------------------------------------------
# training state (resume)

def save_training_state(path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        info: dict) -> Path:
    """Raw weights + Adam moments + counters (``info``: step, wall time, ...), safetensors."""
    from safetensors.torch import save_file

    target = checkpoint_paths(path)["state"]
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous()
               for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for key, val in st.items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            tensors[f"opt.{pid}.{key}"] = t.detach().to("cpu").contiguous()
    info = dict(info, param_groups=opt["param_groups"])
    text = json.dumps(_jsonable(info))
    _atomic_write(target, lambda t: save_file(tensors, str(t), metadata={"training": text}))
    return target


def load_training_state(path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore ``model`` (raw weights) and ``optimizer`` from :func:`save_training_state`;
    returns the ``info`` dict."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    target = checkpoint_paths(path)["state"]
    if not target.is_file():
        raise InputError(f"no training state to resume from: {target}")
    try:
        with safe_open(str(target), framework="pt") as f:
            info = json.loads((f.metadata() or {})["training"])
        tensors = load_file(str(target), device="cpu")
    except Exception as exc:
        raise InputError(f"cannot read training state {target}: corrupt or truncated ({exc})") \
            from None
    mstate = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    _check_state(model, mstate, target)
    dev = next(model.parameters()).device
    model.load_state_dict(mstate)
    ostate: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            ostate.setdefault(int(pid), {})[key] = v if key == "step" else v.to(dev)
    try:
        optimizer.load_state_dict({"state": ostate, "param_groups": info.pop("param_groups")})
    except (KeyError, ValueError) as exc:
        raise InputError(f"{target}: optimizer state does not match ({exc})") from None
    return info

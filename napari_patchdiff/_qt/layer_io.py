"""npe2 reader and writer: float32 TIFF + JSON sidecar, so results round-trip with metadata.

The writer saves an image layer with :func:`napari_patchdiff.io.write_tiff` (its
``layer.metadata``, e.g. a reconstruction's report, goes into the sidecar; ``spacing`` is the
layer's scale). The reader opens a ``.tif``/``.tiff`` that has a sidecar with
:func:`napari_patchdiff.io.read_image` (other TIFFs are left to napari's own reader).
No Qt here.
"""
from __future__ import annotations

from pathlib import Path

from .. import io


def write_image(path: str, data, attributes: dict) -> list[str]:
    """npe2 single-layer writer for image layers."""
    meta = dict(attributes.get("metadata") or {})
    scale = attributes.get("scale")
    if scale is not None:
        meta["spacing"] = [float(s) for s in scale]
    meta.setdefault("name", attributes.get("name"))
    return [str(io.write_tiff(path, data, meta))]


def get_reader(path):
    """npe2 reader hook: a reader for a TIFF with a JSON sidecar, else None."""
    if not isinstance(path, (str, Path)) or Path(path).suffix.lower() not in io.TIFF_SUFFIXES:
        return None
    return read_tiff if io.sidecar_path(path).is_file() else None


def read_tiff(path) -> list[tuple]:
    data, meta = io.read_image(path)
    kwargs = {"name": meta.get("name") or Path(path).stem, "metadata": meta, "colormap": "gray"}
    if meta.get("spacing"):
        kwargs["scale"] = tuple(meta["spacing"])
    return [(data, kwargs, "image")]

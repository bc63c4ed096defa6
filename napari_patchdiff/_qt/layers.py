"""Showing results as napari image layers: one layer per stream, updated in place, and names
that never collide with a layer already there."""
from __future__ import annotations

import numpy as np

__all__ = ["show_layer", "update_layer", "free_name", "image_layers", "ROLE", "plugin_role"]

#: ``layer.metadata`` key naming what the plugin made a layer for ("measurement", "initial",
#: "result"); layers without it are the user's (training images, simulation sources)
ROLE = "napari_patchdiff_role"


def plugin_role(layer) -> str | None:
    return (getattr(layer, "metadata", None) or {}).get(ROLE)


def free_name(viewer, name: str) -> str:
    """``name``, or ``name [2]``, ``name [3]``... : the first that no layer has."""
    taken = {ly.name for ly in viewer.layers}
    out, i = name, 2
    while out in taken:
        out, i = f"{name} [{i}]", i + 1
    return out


def update_layer(layer, data, *, scale=None, translate=None, contrast_limits=None,
                 metadata: dict | None = None):
    """Show ``data`` in ``layer`` (same number of dimensions)."""
    layer.data = np.asarray(data, dtype=np.float32)
    if scale is not None:
        layer.scale = scale
    if translate is not None:
        layer.translate = translate
    if metadata is not None:
        layer.metadata = metadata
    _contrast(layer, contrast_limits)
    return layer


def _contrast(layer, contrast_limits) -> None:
    data = layer.data
    if contrast_limits is not None:
        layer.contrast_limits = contrast_limits
    elif data.size and float(data.min()) < float(data.max()):
        layer.reset_contrast_limits()


def show_layer(viewer, name: str, data, *, scale=None, translate=None, contrast_limits=None,
               colormap: str = "gray", metadata: dict | None = None, layer=None):
    """Update ``layer`` (a layer the caller made earlier) in place if it is still in the viewer
    and has as many dimensions as ``data``; else add a new image layer named ``name`` (or, if
    that name is taken, a free variant of it: no layer is ever replaced)."""
    data = np.asarray(data, dtype=np.float32)
    if layer is not None and layer in viewer.layers and layer.ndim == data.ndim:
        return update_layer(layer, data, scale=scale, translate=translate,
                            contrast_limits=contrast_limits, metadata=metadata)
    if layer is not None and layer in viewer.layers:  # ours, with other dimensions
        name = layer.name
        viewer.layers.remove(layer)
    layer = viewer.add_image(data, name=free_name(viewer, name), colormap=colormap, scale=scale,
                             translate=translate, metadata=metadata or {})
    _contrast(layer, contrast_limits)
    return layer


def image_layers(viewer, *, users_only: bool = False):
    """The image layers (``users_only``: not measurements, initial reconstructions or results
    the plugin made)."""
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and not ly.rgb
            and not (users_only and plugin_role(ly))]

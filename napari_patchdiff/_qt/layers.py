"""Showing results as napari image layers: one layer per stream, updated in place."""
from __future__ import annotations

import numpy as np

__all__ = ["show_layer", "image_layers"]


def show_layer(viewer, name: str, data, *, scale=None, translate=None, contrast_limits=None,
               colormap: str = "gray", metadata: dict | None = None):
    """Add image layer ``name`` or update it in place (one layer per stream)."""
    from napari.layers import Image

    data = np.asarray(data, dtype=np.float32)
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is not None and (not isinstance(layer, Image) or layer.ndim != data.ndim):
        viewer.layers.remove(layer)
        layer = None
    if layer is None:
        layer = viewer.add_image(data, name=name, colormap=colormap, scale=scale,
                                 translate=translate, metadata=metadata or {})
    else:
        layer.data = data
        if scale is not None:
            layer.scale = scale
        if translate is not None:
            layer.translate = translate
        if metadata is not None:
            layer.metadata = metadata
    if contrast_limits is not None:
        layer.contrast_limits = contrast_limits
    elif data.size and float(data.min()) < float(data.max()):
        layer.reset_contrast_limits()
    return layer


def image_layers(viewer):
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and not ly.rgb]

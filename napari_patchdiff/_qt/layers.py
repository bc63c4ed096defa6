"""Showing results as napari image layers: one layer per stream, updated in place, and names
that never collide with a layer already there; :class:`RunLayers`, the layers of one run of the
Reconstruct widget as its updates stream in."""
from __future__ import annotations

import numpy as np

from ..plugin.jobs import Update, UpdateKind
from ..plugin.state import Display

__all__ = ["show_layer", "update_layer", "free_name", "image_layers", "ROLE", "plugin_role",
           "RunLayers"]

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


class RunLayers:
    """The layers of one run (of the Reconstruct widget): each stream of its updates in a layer
    of its own, named ``<method> #<n>`` (n: the first index no layer uses) and ``<method> #<n>
    <stream>``, placed where the problem's source is; and what the run's updates say (metrics,
    status). No earlier run's layer is changed or removed.

    One run: the estimate streams into the layer named after the method. Several samples of a
    diffusion method: layers "samples" (sample axis first), "mean", "std", "lower (sample
    quantile)", "upper (sample quantile)", "lower (calibrated)" and "upper (calibrated)" where a
    calibration applies (the "bounds" field), and, antithetic, "pair correlation" update as
    samples finish. Result layers carry the run's report in ``layer.metadata``. A cancelled
    run keeps its layers, renamed "... (cancelled)"."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.job = None
        self.display = Display()
        self.prefix, self.layers = "", {}

    def begin(self, job, display: Display) -> None:
        """A new run: ``job`` (a :class:`~napari_patchdiff.plugin.jobs.ReconJob`) on a problem
        shown as ``display``."""
        self.job, self.display = job, display
        self.prefix, self.layers = self._free_prefix(job.method), {}

    def _free_prefix(self, method: str) -> str:
        taken = [ly.name for ly in self.viewer.layers]
        n = 1
        while any(t == f"{method} #{n}" or t.startswith(f"{method} #{n} ") for t in taken):
            n += 1
        return f"{method} #{n}"

    @property
    def names(self) -> dict[str, str]:
        """Stream ("estimate", "samples", "mean", "std", ...) -> the name of its layer (those
        still in the viewer)."""
        return {key: layer.name for key, layer in self.layers.items()
                if layer in self.viewer.layers}

    def show(self, key, data, report=None, stack=False, units=None, **kw):
        """Show stream ``key`` of this run in its own layer (made at its first update)."""
        d = self.display
        scale = tuple(d.scale) if d.scale else None
        translate = tuple(d.translate) if d.translate else None
        if stack and d.slice_z is not None:  # one slice of a volume: the stack sits at it
            data = np.asarray(data)[:, None]
            scale = (1.0, d.slice_z[1], *scale)
            translate = (0.0, d.slice_z[0], *(translate or (0.0, 0.0))[-2:])
        elif stack and scale is not None:
            scale = (1.0, *scale)
            translate = None if translate is None else (0.0, *translate)
        meta = {**(report or {"method": self.job.method}), "units": units or d.units,
                ROLE: "result"}
        if d.affine is not None and not stack:  # shaped as the input: saved where it was
            meta["affine"] = d.affine
        name = self.prefix if key == "estimate" else f"{self.prefix} {key}"
        first = not self.layers
        self.layers[key] = show_layer(self.viewer, name, data, scale=scale,
                                      translate=translate, metadata=meta,
                                      layer=self.layers.get(key), **kw)
        if first:
            self._go_to_slice()
        return self.layers[key]

    def _go_to_slice(self) -> None:
        """Move the viewer to the slice this run reconstructs (one slice of a volume)."""
        z = self.display.slice_z
        if z is not None and self.viewer.dims.ndim >= 3:
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, z[0])

    def update(self, u: Update) -> None:
        """Show what ``u`` brings: the live estimate, the samples and maps of an ensemble; at
        the end the result on top (an ensemble's live estimate removed), or, cancelled, every
        layer of the run renamed "... (cancelled)"."""
        limits = self.display.contrast_limits
        report = u.report or None
        if u.kind is UpdateKind.STEP and u.image is not None:
            self.show("estimate", u.image, contrast_limits=limits)
        if u.samples is not None:
            self.show("samples", u.samples, report, stack=True, contrast_limits=limits)
        for key, data in (u.maps or {}).items():
            kw = ({"contrast_limits": limits} if key == "mean" or key.startswith(("lower", "upper"))
                  else {})
            if key == "std":
                kw = {"colormap": "magma"}
            elif key == "pair correlation":
                kw = {"colormap": "bwr", "contrast_limits": (-1.0, 1.0), "units": "correlation"}
            self.show(key, data, report, **kw)
        if u.kind is UpdateKind.DONE:
            self._finish(u, report, limits)
        elif u.kind is UpdateKind.CANCELLED:
            self._cancel(u, report, limits)

    def _finish(self, u: Update, report, limits) -> None:
        layers = self.viewer.layers
        if u.samples is None:
            self.show("estimate", u.image, report, contrast_limits=limits)
        elif "estimate" in self.layers:  # an ensemble: this run's live estimate (the
            live = self.layers.pop("estimate")  # samples hold the result) goes
            if live in layers:
                layers.remove(live)
        top = self.layers.get("mean", self.layers.get("estimate"))
        if top is not None and top in layers:  # the result on top, selected
            layers.move(layers.index(top), len(layers))
            layers.selection.active = top

    def _cancel(self, u: Update, report, limits) -> None:
        if u.image is not None:
            self.show("estimate", u.image,
                      {**(report or {"method": self.job.method}), "cancelled": True},
                      contrast_limits=limits)
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                layer.name = free_name(self.viewer, f"{layer.name} (cancelled)")
                layer.metadata = {**layer.metadata, "cancelled": True}

    def metrics_text(self, u: Update) -> str:
        """The metrics ``u`` carries, as one line ("" if none)."""
        m = u.metrics
        parts = []
        if "psnr" in m:
            parts.append(f"{'mean' if u.maps else 'estimate'}: PSNR {m['psnr']:.2f} dB")
        if "ssim" in m:
            parts.append(f"SSIM {m['ssim']:.4f}")
        if "coverage" in m:
            parts.append(f"coverage of the {self.job.level:.0%} bounds {m['coverage']:.1%}")
        if "adapt loss" in m:
            parts.append(f"adaptation loss {m['adapt loss']:.3g}")
        return ", ".join(parts)

    def status_text(self, u: Update) -> str:
        """Where the run is after ``u``, and at its end where its layers are."""
        job = self.job
        if u.kind is UpdateKind.STEP:
            return u.text or f"step {u.step}/{u.total}"
        if u.kind is UpdateKind.SAMPLE:
            return f"{u.text} of {job.samples} done"
        if u.kind is UpdateKind.DONE:
            secs = u.report.get("seconds")
            what = f"{job.samples} samples of {job.method}" if job.samples > 1 else job.method
            return f"done: {what}" + (f" in {secs:.1f} s" if secs else "") + (
                f" -> {self.prefix}" if self.layers else "")
        kept = f"; kept as {self.prefix} (cancelled)" if self.layers else ""
        return f"cancelled: {u.text or 'nothing finished'}{kept}"

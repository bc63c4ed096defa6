"""The napari plugin's GUI: dock widgets, background jobs, layer reader/writer, scripting.

Everything that imports Qt or napari lives here; the core library never imports this package.
Modules: :mod:`.state` (the per-viewer model the widgets share, no Qt), :mod:`.jobs` (frozen job
configs, the Qt-free update generators and the thread-worker glue), :mod:`.widgets` (the three
dock widgets), :mod:`.layer_io` (npe2 reader/writer: float32 TIFF + JSON sidecar) and
:mod:`.scripting` (open a viewer with the plugin docked from a script). This ``__init__`` imports
nothing, so the reader/writer load without Qt.
"""

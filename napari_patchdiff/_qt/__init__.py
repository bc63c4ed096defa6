"""The napari plugin's GUI: Qt code only. The core library never imports this package.

One dock widget per file (:mod:`.measurement_widget`, :mod:`.prior_widget`,
:mod:`.reconstruct_widget`), the form helpers they share (:mod:`.forms`), the job panel
(:mod:`.job_panel`) and the thread-worker glue (:mod:`.workers`) that runs the Qt-free jobs of
:mod:`napari_patchdiff.plugin.jobs`, result layers (:mod:`.layers`), the npe2 reader/writer
(:mod:`.layer_io`: float32 TIFF + JSON sidecar) and :mod:`.scripting` (a viewer with the plugin
docked, driven from a script). The widgets share the Qt-free per-viewer model
:mod:`napari_patchdiff.plugin.state`. This ``__init__`` imports nothing, so the reader/writer load
without Qt.
"""

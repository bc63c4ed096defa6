"""Curated sample data shipped with napari-patchdiff (see README.md here)."""

"""napari-patchdiff: image reconstruction from incomplete measurements with patch diffusion priors."""
__version__ = "0.1.0"

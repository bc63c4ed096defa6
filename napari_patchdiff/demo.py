"""The README's main job (20-view CT of a held-out lung slice): it lives in
:mod:`napari_patchdiff.cli.demo` beside the ``demo`` command; this module keeps its old
import path."""
from .cli.demo import (DEMO_METHODS, DEMO_NOISE, DEMO_OPERATOR, DEMO_PRIOR, DEMO_SLICE,
                       comparison_figure, run_demo)

__all__ = ["DEMO_METHODS", "DEMO_NOISE", "DEMO_OPERATOR", "DEMO_PRIOR", "DEMO_SLICE",
           "comparison_figure", "run_demo"]

"""``python -m napari_patchdiff.cli``: the ``napari-patchdiff`` command."""
import sys

from . import main

sys.exit(main())

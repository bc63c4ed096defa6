"""The ``napari-patchdiff`` argument parser: the program's own options and one subcommand per
module of this package, each of which adds its parser (``add_parser``) and runs it (``func``)."""
from __future__ import annotations

import argparse

from .. import __version__
from . import calibrate, demo, info, reconstruct, sample, train

#: the subcommands, in the order ``--help`` lists them
COMMANDS = (reconstruct, sample, calibrate, train, info, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-patchdiff",
        description="Reconstruct images from incomplete measurements (CT, MRI, deblurring, "
        "super-resolution, inpainting) with classical methods and patch diffusion priors.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser

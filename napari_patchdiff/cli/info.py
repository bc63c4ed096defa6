"""``napari-patchdiff info``: print a prior's metadata without loading its weights."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    info = sub.add_parser("info", help="print a prior's metadata",
                          description="Print the metadata of a shipped prior (by name) or a "
                          "checkpoint file, without loading its weights.")
    info.add_argument("prior", help="shipped prior name or checkpoint path")
    info.add_argument("--json", action="store_true", help="print the raw JSON")
    info.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from ..priors import read_metadata, shipped_priors

    path = shipped_priors().get(args.prior, args.prior)
    meta = read_metadata(path)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return 0
    for key in sorted(meta):
        value = meta[key]
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        print(f"{key:24s} {value}")
    return 0

"""Create the curated sample data in ``sample_data/`` from the development data.

Run from the repository root (or anywhere)::

    python scripts/make_sample_data.py [--data ../shared/data]

Outputs (all zlib-compressed multi-page TIFF plus a JSON sidecar each):

- ``ct_lung.tif``: lung2.tif slices 45..60 (inclusive; not in the prior training split),
  each 512 x 512 slice averaged over 2 x 2 blocks to 256 x 256, rounded to int16 HU.
- ``mri_brain.tif``: brain2.tif, all 23 slices (the MRI test split), int16 scanner units.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
OUT = REPO / "sample_data"
CT_SLICES = (45, 60)  # inclusive
ATTRIBUTION = "pyradiomics test data"
LICENCE = "BSD-3-Clause (pyradiomics 3.0.1 source distribution, data/*_image.nrrd)"


def block_mean_2x2(volume: np.ndarray) -> np.ndarray:
    """Average each slice of ``volume`` (slices, rows, cols) over 2 x 2 blocks, in float64."""
    z, r, c = volume.shape
    v = volume.astype(np.float64).reshape(z, r // 2, 2, c // 2, 2)
    return v.mean(axis=(2, 4))


def save(name: str, data: np.ndarray, meta: dict) -> None:
    """Write ``data`` as an int16 zlib TIFF and ``meta`` as a pretty JSON sidecar."""
    tifffile.imwrite(OUT / f"{name}.tif", data, compression="zlib", photometric="minisblack")
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    (OUT / f"{name}.json").write_text(text, encoding="utf-8")


def make_ct(data_dir: Path) -> None:
    """The CT sample: lung2 slices 45..60, 256 x 256, int16 HU."""
    lo, hi = CT_SLICES
    vol = tifffile.imread(data_dir / "lung2.tif")[lo : hi + 1]
    ct = np.round(block_mean_2x2(vol)).astype(np.int16)
    meta = {
        "modality": "ct",
        "units": "HU",
        "spacing": [5.0, 1.254, 1.254],
        "source": "lung2.tif (pyradiomics-3.0.1 sdist data/lung2_image.nrrd)",
        "slices": list(range(lo, hi + 1)),
        "processing": "2x2 block mean of 512x512 slices (0.627 mm) to 256x256, rounded to int16",
        "attribution": ATTRIBUTION,
        "licence": LICENCE,
        "split": "test (lung2 slices 45-49 are the gap, 50-60 the CT test slices)",
    }
    save("ct_lung", ct, meta)


def make_mri(data_dir: Path) -> None:
    """The MRI sample: brain2, all 23 slices, int16 scanner units."""
    mri = tifffile.imread(data_dir / "brain2.tif").astype(np.int16)
    meta = {
        "modality": "mri",
        "units": "scanner units",
        "spacing": [6.5, 0.781, 0.781],
        "source": "brain2.tif (pyradiomics-3.0.1 sdist data/brain2_image.nrrd)",
        "slices": list(range(mri.shape[0])),
        "processing": "none (copied as is)",
        "attribution": ATTRIBUTION,
        "licence": LICENCE,
        "split": "test (brain2 is the MRI test split)",
    }
    save("mri_brain", mri, meta)


def main() -> None:
    """Parse arguments and write both samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="folder with lung2.tif and brain2.tif"
    )
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    make_ct(args.data)
    make_mri(args.data)
    for p in sorted(OUT.glob("*.tif")) + sorted(OUT.glob("*.json")):
        print(f"{p.relative_to(REPO)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()

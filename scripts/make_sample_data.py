"""Create the curated sample data in ``sample_data/`` from the development data.

Run from the repository root (or anywhere)::

    python scripts/make_sample_data.py [--data ../shared/data] [--nilearn-wheel WHEEL]

Outputs (all zlib-compressed multi-page TIFF plus a JSON sidecar each):

- ``ct_lung.tif``: lung2.tif slices 45..60 (inclusive; not in the prior training split),
  each 512 x 512 slice averaged over 2 x 2 blocks to 256 x 256, rounded to int16 HU.
- ``mri_brain.tif``: brain2.tif, all 23 slices (the MRI test split), int16 scanner units.
- ``mri_mni152.tif`` (with ``--nilearn-wheel``, the wheel from ``pip download nilearn==0.14.1
  --no-deps``): the MNI ICBM152 2009a T1 template that the nilearn wheel ships, 1 mm isotropic,
  the isotropic development volume of true 3D (issue 36).
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


MNI_MEMBER = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_LICENCE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University. Permission to use, copy, modify, and distribute "
    "this software and its documentation for any purpose and without fee is hereby granted, "
    "provided that the above copyright notice appear in all copies. The authors and McGill "
    "University make no representations about the suitability of this software for any "
    "purpose. It is provided 'as is' without express or implied warranty. (ICBM152 2009 "
    "licence, as distributed with the template; nilearn itself is BSD-3-Clause)")


def make_mni(wheel: Path) -> None:
    """The isotropic MRI sample: the MNI ICBM152 2009a T1 template from the nilearn wheel,
    reordered from the NIfTI (x, y, z) array (RAS+, 1 mm) to axial slices (z, y, x) with the
    anterior rows first, as the other samples are stored; values unchanged (0-255)."""
    import gzip
    import zipfile

    import nibabel as nib

    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read(MNI_MEMBER))
    img = nib.Nifti1Image.from_bytes(raw)
    if nib.aff2axcodes(img.affine) != ("R", "A", "S"):
        raise SystemExit(f"unexpected orientation {nib.aff2axcodes(img.affine)}")
    xyz = np.asarray(img.dataobj)
    vol = np.ascontiguousarray(xyz.transpose(2, 1, 0)[:, ::-1, :]).astype(np.int16)
    meta = {
        "modality": "mri",
        "units": "template intensity (0-255)",
        "spacing": [float(z) for z in img.header.get_zooms()[::-1]],
        "source": f"{wheel.name}: {MNI_MEMBER} (MNI ICBM152 2009a nonlinear symmetric T1 "
                  "template; http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009)",
        "slices": list(range(vol.shape[0])),
        "processing": "NIfTI (x, y, z) RAS+ array reordered to (z, y, x), rows flipped so the "
                      "first row is anterior; values unchanged, stored as int16",
        "attribution": "MNI ICBM152 2009a template (Fonov et al., NeuroImage 2011; Fonov et "
                       "al., NeuroImage 2009), via nilearn",
        "licence": MNI_LICENCE,
        "split": "development volume of true 3D (an average of 152 brains: never trained on)",
    }
    save("mri_mni152", vol, meta)


def main() -> None:
    """Parse arguments and write both samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="folder with lung2.tif and brain2.tif"
    )
    parser.add_argument("--nilearn-wheel", type=Path, default=None,
                        help="the nilearn 0.14.1 wheel (pip download nilearn==0.14.1 --no-deps)")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    make_ct(args.data)
    make_mri(args.data)
    if args.nilearn_wheel is not None:
        make_mni(args.nilearn_wheel)
    for p in sorted(OUT.glob("*.tif")) + sorted(OUT.glob("*.json")):
        print(f"{p.relative_to(REPO)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()

"""Telling the intensity convention of an image: ``"ct"`` (HU), ``"mri"`` (scanner units) or
``"unit"`` (already on [0, 1]), from its metadata or, only where no other reading is plausible,
from its values (:func:`infer_modality`). Used by :func:`napari_patchdiff.io.read_image` to
normalise the ``modality`` key (:func:`canonical_modality`) and by the problem setup and the
training data to pick a scale.
"""
from __future__ import annotations

import numpy as np

from ..conventions import UNITS
from ..errors import InputError

__all__ = [
    "AMBIGUOUS_MAX",
    "HU_AIR_BELOW",
    "HU_FLOOR",
    "canonical_modality",
    "guess_modality",
    "infer_modality",
    "is_real_numeric",
    "stated_modality",
]

#: below this minimum, values are CT in HU (air is about -1000 HU)
HU_AIR_BELOW = -200.0
#: ... unless they go below this: no HU value (nor the usual padding, -3024) is that low
HU_FLOOR = -3100.0
#: non-negative whole numbers up to this fit raw 12-bit CT values as well as MRI magnitudes
AMBIGUOUS_MAX = 4095
#: MRI magnitudes are not negative: values below minus this fraction of their range (beyond
#: the small undershoot of interpolation or filtering) contradict metadata saying MRI
MRI_NEGATIVE_FRACTION = 0.05
_MODALITY_ALIASES = {"ct": "ct", "mr": "mri", "mri": "mri", "unit": "unit"}
_UNITS_MODALITY = {units.lower(): modality for modality, units in UNITS.items()}
_ASK = "pass modality='ct', 'mri' or 'unit'"


def canonical_modality(value) -> str | None:
    """Normalise a modality string ("CT", "MR", "mri", ...) to "ct", "mri", "unit" or None."""
    if value is None:
        return None
    return _MODALITY_ALIASES.get(str(value).strip().lower())


def is_real_numeric(dtype) -> bool:
    """True for integer and floating dtypes (not bool, complex, strings, objects)."""
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def stated_modality(meta: dict | None) -> tuple[str | None, str]:
    """The modality the metadata states (units first, then ``modality``) and the reason, in
    words; ``(None, "")`` when it states none. Unlike :func:`infer_modality` this never raises
    (for comparing with a modality the user gave)."""
    meta = meta or {}
    given, units = meta.get("modality"), str(meta.get("units") or "").strip()
    by_units = _UNITS_MODALITY.get(units.lower())
    if by_units is not None:
        return by_units, f"the metadata says units {units}"
    if canonical_modality(given) is not None:
        return canonical_modality(given), f"the metadata says modality {given}"
    return None, ""


def infer_modality(array, meta: dict | None = None,
                   told: tuple[str, str] | None = None) -> tuple[str, str]:
    """The intensity convention of ``array`` (``"ct"``, ``"mri"`` or ``"unit"``) and the reason,
    in words; :class:`InputError` (asking for ``modality``) when it cannot be told safely.

    Metadata always wins. Units saying what the values are come first (``"HU"``: ct,
    ``"scanner units"``: mri, ``"normalised [0, 1]"``: unit; a reconstruction of a CT scan on
    the normalised scale is "unit"), then ``meta["modality"]`` (CT, MR/MRI, unit). A modality
    naming none of these, or CT units with an MRI modality (or the reverse), is refused, and so
    is metadata saying MRI for values that go clearly negative (below
    :data:`MRI_NEGATIVE_FRACTION` of their range; magnitudes are not negative: e.g. CT in HU
    with a wrong sidecar, which would be reconstructed as magnitudes).
    Otherwise the values decide (NaNs ignored), and only where no other reading is plausible:

    - minimum below -200 (air in HU) and not below -3100: ``"ct"``;
    - other negative values: refused (a CT crop in HU without air, e.g. soft tissue from -120
      to 60, or signed MRI/phase data: ``normalise(..., "mri")`` would take their magnitude);
    - every value in [0, 1]: ``"unit"``;
    - non-negative whole numbers (any dtype) up to 4095: refused, they fit CT in HU without
      air as well as raw 12-bit CT values and MRI magnitudes;
    - other non-negative values (whole numbers above 4095, or values with fractions, which
      neither raw CT values nor DICOM HU have): ``"mri"``.

    ``told``: ``(modality, who)`` from elsewhere, e.g. ``("mri", "the operator mri-cartesian")``
    (the operator measures what it measures), settles what the values leave open, where the
    values allow that reading unchanged: MRI for non-negative whole numbers up to 4095; CT for
    partly negative values without air (a HU crop; not for values within [-200, 1], a signed
    normalised scale). Signed data stay refused for MRI (its magnitude would change them) and
    whole numbers for CT (HU or raw 12-bit values: a CT operator cannot tell).
    """
    meta = meta or {}
    given, units = meta.get("modality"), str(meta.get("units") or "").strip()
    modality, by_units = canonical_modality(given), _UNITS_MODALITY.get(units.lower())
    if given is not None and str(given).strip() and modality is None:
        raise InputError(f"the metadata says modality {given!r}, which is none of ct, mri, "
                         f"unit; {_ASK}")
    if {modality, by_units} == {"ct", "mri"}:
        raise InputError(f"the metadata says modality {given!r} but units {units!r}; {_ASK}")
    stated, reason = stated_modality(meta)
    if stated == "mri":
        _check_magnitudes(array, reason)
    if stated is not None:
        return stated, reason
    a = np.asarray(array)
    if not is_real_numeric(a.dtype):
        raise InputError(f"cannot tell the modality of data of dtype {a.dtype}; {_ASK}")
    finite = a[np.isfinite(a)] if np.issubdtype(a.dtype, np.floating) else a
    if finite.size == 0:
        raise InputError(f"cannot tell the modality of an image without finite values; {_ASK}")
    lo, hi = float(finite.min()), float(finite.max())
    span = f"values from {lo:g} to {hi:g}"
    if HU_FLOOR <= lo < HU_AIR_BELOW:
        return "ct", f"values from {lo:g} (air in HU)"
    if lo < HU_FLOOR:
        raise InputError(f"cannot tell the modality: {span} go far below air in HU (-1024), "
                         f"so they are not CT in HU; {_ASK}")
    if lo < 0:
        if told is not None and told[0] == "ct" and hi > 1:
            return "ct", f"{told[1]} measures CT; {span} hold no air: a HU crop"
        raise InputError(f"cannot tell the modality: {span} are partly negative but hold no "
                         f"air (below {HU_AIR_BELOW:g} HU), as a CT crop in HU or signed MRI "
                         f"data would{_not_told(told, signed=True)}; {_ASK}")
    if hi <= 1:
        return "unit", "all values in [0, 1]"
    whole = not np.issubdtype(finite.dtype, np.floating) or bool(
        np.all(finite == np.round(finite)))
    if whole and hi <= AMBIGUOUS_MAX:
        if told is not None and told[0] == "mri":
            return "mri", (f"{told[1]} measures MRI; non-negative whole numbers ({span}): MRI "
                           "magnitudes")
        raise InputError(f"cannot tell the modality: non-negative whole numbers ({span}, at most "
                         f"{AMBIGUOUS_MAX}) fit CT (HU without air, or raw 12-bit values) as "
                         f"well as MRI magnitudes{_not_told(told, signed=False)}; {_ASK}")
    if whole:
        return "mri", (f"non-negative whole numbers up to {hi:g}, above {AMBIGUOUS_MAX} (raw "
                       "12-bit CT): MRI magnitudes")
    return "mri", (f"non-negative values up to {hi:.6g} with fractions, no air: MRI "
                   "magnitudes")


def _not_told(told: tuple[str, str] | None, signed: bool) -> str:
    """Why ``told`` (see :func:`infer_modality`) did not settle it, for a refusal of signed
    values or of non-negative whole numbers."""
    if told is None:
        return ""
    modality, who = told
    if modality == "mri" and signed:
        why = "its magnitudes would change these signed values"
    elif modality == "ct" and signed:
        why = "values within [-200, 1] are no HU image"
    elif modality == "ct":
        why = "not whether these are HU or raw stored values"
    else:
        why = "the values do not fit it"
    return f" ({who} says {modality}, but {why})"


def _check_magnitudes(array, reason: str) -> None:
    """InputError when metadata saying MRI (``reason``) is contradicted by clearly negative
    values."""
    a = np.asarray(array)
    if not is_real_numeric(a.dtype) or a.size == 0:
        return
    finite = a[np.isfinite(a)] if np.issubdtype(a.dtype, np.floating) else a
    if finite.size == 0:
        return
    lo, hi = float(finite.min()), float(finite.max())
    if lo < 0 and -lo > MRI_NEGATIVE_FRACTION * (hi - lo):
        air = HU_FLOOR <= lo < HU_AIR_BELOW
        looks = " (they look like CT in HU, air included)" if air else ""
        raise InputError(f"{reason} (MRI magnitudes, never negative), but the values go down to "
                         f"{lo:g} (up to {hi:g}){looks}; fix the modality in the sidecar or "
                         f"metadata, or {_ASK}")


def guess_modality(array, meta: dict | None = None) -> str:
    """The modality of :func:`infer_modality` without its reason (InputError when unsafe)."""
    return infer_modality(array, meta)[0]

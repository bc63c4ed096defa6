"""Helper of the bad-input tours (tests/test_bad_inputs.py, tests/test_inputs_round2.py): run
each call and say which did not raise a one-line InputError."""
from __future__ import annotations

from napari_patchdiff.errors import InputError


def not_input_errors(cases: dict) -> list[str]:
    """``label: what happened`` for each call of ``cases`` (label -> no-argument callable)
    that was accepted, raised another exception, or raised an InputError of several lines or
    none."""
    failures = []
    for label, call in cases.items():
        try:
            call()
        except InputError as exc:
            if "\n" in str(exc) or not str(exc):
                failures.append(f"{label}: message {str(exc)!r}")
        except Exception as exc:  # noqa: BLE001 - the point of the tours
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
        else:
            failures.append(f"{label}: accepted")
    return failures

"""Form helpers shared by the dock widgets: inputs built from declared parameters, small
widget factories, and the error notification."""
from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLineEdit, QSpinBox,
                            QVBoxLayout, QWidget)

from ..errors import InputError
from ..params import Param

__all__ = ["MAX_SEED", "ParamForm", "FormSlot", "combo", "spin", "row", "fmt", "notify_error"]

MAX_SEED = 2**31 - 1


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def combo(items, current=None, tips=None) -> QComboBox:
    box = QComboBox()
    for i, item in enumerate(items):
        box.addItem(str(item))
        if tips:
            box.setItemData(i, tips[i], Qt.ItemDataRole.ToolTipRole)
    if current is not None:
        box.setCurrentText(str(current))
    return box


def spin(lo, hi, value, special: str | None = None) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def row(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(w)
    return row


class ParamForm(QWidget):
    """Inputs for a tuple of :class:`~napari_patchdiff.params.Param` (a registry entry's).

    Numbers are typed as text, choices are combo boxes, flags check boxes. With ``prefill``
    (operators) the inputs start at the declared defaults. Without it (methods) they start
    empty / "auto": nothing is sent, so the method resolves its own default for the operator and
    noise level, exactly as from Python or the CLI (:meth:`show_defaults` shows those values
    as placeholders); only what the user sets is sent.
    """

    def __init__(self, params: tuple[Param, ...] = (), skip=(), prefill: bool = True):
        super().__init__()
        self.params = [p for p in params if p.name not in skip]
        self.inputs: dict[str, QWidget] = {}
        form = QFormLayout(self)
        form.setContentsMargins(12, 0, 0, 0)
        for p in self.params:
            given = p.default if prefill else None
            if p.type is bool:
                w = QCheckBox()
                w.setChecked(bool(p.default))
            elif p.choices:
                w = combo((["auto"] if given is None else []) + list(p.choices), given)
            else:
                w = QLineEdit("" if given is None else fmt(given))
                w.setPlaceholderText("auto")
            w.setToolTip(p.help)
            form.addRow(p.name.replace("_", " "), w)
            self.inputs[p.name] = w

    def values(self) -> dict[str, Any]:
        """The values set (InputError for text that is not a number)."""
        out = {}
        for p in self.params:
            w = self.inputs[p.name]
            if isinstance(w, QCheckBox):
                out[p.name] = w.isChecked()
            elif isinstance(w, QComboBox):
                if w.currentText() != "auto":
                    out[p.name] = p.check(w.currentText(), text=True)
            elif w.text().strip():
                out[p.name] = p.check(w.text().strip(), text=True)
        return out

    def set_values(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            w = self.inputs.get(name)
            if w is None:
                raise InputError(f"no parameter {name!r} here; choose from {sorted(self.inputs)}")
            if isinstance(w, QCheckBox):
                w.setChecked(bool(value))
            elif isinstance(w, QComboBox):
                w.setCurrentText("auto" if value is None else str(value))
            else:
                w.setText("" if value is None else str(value))

    def show_defaults(self, defaults: dict[str, Any]) -> None:
        for name, w in self.inputs.items():
            if isinstance(w, QLineEdit):
                value = defaults.get(name)
                w.setPlaceholderText("auto" if value is None else f"auto: {fmt(value)}")


class FormSlot(QWidget):
    """Holds a :class:`ParamForm` that is rebuilt when the operator/method changes."""

    def __init__(self):
        super().__init__()
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(0, 0, 0, 0)
        self.form = ParamForm()
        self.layout().addWidget(self.form)

    def set(self, params, skip=(), prefill: bool = True) -> ParamForm:
        self.form.setParent(None)
        self.form.deleteLater()
        self.form = ParamForm(params, skip, prefill)
        self.layout().addWidget(self.form)
        return self.form

"""Form helpers shared by the dock widgets: inputs built from declared parameters, small
widget factories, and the error notification."""
from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QFrame, QHBoxLayout, QLineEdit,
                            QScrollArea, QSizePolicy, QSpinBox, QToolButton, QVBoxLayout, QWidget)

from ..errors import InputError
from ..params import Param

__all__ = ["MAX_SEED", "ParamForm", "FormSlot", "Section", "combo", "spin", "row", "fmt",
           "notify_error", "scroll_body", "grow_dock", "show_row", "param_field", "field_value",
           "set_field"]

#: the largest value of a spin box (Qt's int)
MAX_INT = 2**31 - 1
MAX_SEED = MAX_INT


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


def param_field(p: Param, default: Any = None, text: str = "", tooltip: str | None = None
                ) -> QWidget:
    """An input for the declared parameter ``p`` starting at ``default`` (None: "auto", for a
    parameter resolved from the others): a check box (labelled ``text``) for a flag, a combo
    box for choices, a spin box for an integer (its declared bounds), a line edit otherwise
    (values separated by spaces for a ``many``). ``tooltip``: its help (default ``p.help``).
    Read it back with :func:`field_value`."""
    if p.type is bool:
        w = QCheckBox(text)
        w.setChecked(bool(default))
    elif p.choices:
        w = combo((["auto"] if default is None else []) + list(p.choices), default)
    elif p.type is int and not p.many:
        lo = -MAX_INT if p.low is None else int(p.low) + bool(p.open_low)
        hi = MAX_INT if p.high is None else min(int(p.high) - bool(p.open_high), MAX_INT)
        auto = default is None
        w = spin(lo - auto, hi, lo - 1 if auto else int(default), "auto" if auto else None)
    else:
        shown = " ".join(map(fmt, default)) if p.many and default is not None else default
        w = QLineEdit("" if shown is None else fmt(shown))
        w.setPlaceholderText("auto")
    w.setToolTip(p.help if tooltip is None else tooltip)
    return w


def field_value(p: Param, w: QWidget) -> Any:
    """The value of an input made by :func:`param_field`, checked by ``p`` (InputError naming
    it otherwise); None for "auto"."""
    if isinstance(w, QCheckBox):
        return p.check(w.isChecked())
    if isinstance(w, QComboBox):
        return None if w.currentText() == "auto" else p.check(w.currentText(), text=True)
    if isinstance(w, QSpinBox):
        auto = w.specialValueText() and w.value() == w.minimum()
        return None if auto else p.check(w.value())
    text = w.text().strip()
    return None if not text and p.default is None else p.check(text, text=True)


def set_field(p: Param, w: QWidget, value: Any) -> None:
    """Set an input made by :func:`param_field` as a user would (None: "auto")."""
    if isinstance(w, QCheckBox):
        w.setChecked(bool(value))
    elif isinstance(w, QComboBox):
        w.setCurrentText("auto" if value is None else str(value))
    elif isinstance(w, QSpinBox):
        w.setValue(w.minimum() if value is None else int(value))
    elif p.many and value is not None and not isinstance(value, str):
        w.setText(" ".join(map(fmt, value)))
    else:
        w.setText("" if value is None else str(value))


def row(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(w)
    return row


class _Scroll(QScrollArea):
    """A scroll area that asks for its contents' whole height (a dock area shares its height
    by these hints: the dock with the most fields gets the most), and scrolls when it gets
    less."""

    def sizeHint(self):
        hint = super().sizeHint()
        if self.widget() is not None:
            hint.setHeight(max(hint.height(), self.widget().sizeHint().height()))
            hint.setWidth(max(hint.width(), self.minimumSizeHint().width()))
        return hint

    def minimumSizeHint(self):
        """As wide as the contents need (no sideways scrolling), a few lines high."""
        hint = super().minimumSizeHint()
        if self.widget() is not None:
            bar = self.verticalScrollBar().sizeHint().width()
            hint.setWidth(self.widget().minimumSizeHint().width() + bar + 2 * self.frameWidth())
        return hint

    def eventFilter(self, obj, event):
        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the contents changed (a section opened, a form rebuilt)
        return super().eventFilter(obj, event)


def scroll_body(owner: QWidget, footer: QWidget | None = None, min_height: int = 0,
                expanding: bool = False) -> QVBoxLayout:
    """Put ``owner``'s contents in a scroll area (``owner.scroll``) and return the layout to fill:
    a dock then needs only a few lines of height, so three docks fit a laptop screen beside
    napari's own, and every field can still be scrolled to. ``footer`` (e.g. the Run panel)
    stays below the scroll area, always in view; ``min_height``: the scroll area's, so that
    a dock stacked under others keeps a few usable lines; ``expanding``: this dock takes the
    height the others do not need (the Reconstruct dock)."""
    body = QWidget()
    scroll = _Scroll()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setWidget(body)
    scroll.setMinimumHeight(min_height)
    if not expanding:
        scroll.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    if footer is not None:
        outer.addWidget(footer)
    owner.scroll = scroll
    return QVBoxLayout(body)


def grow_dock(widget: QWidget, share: float) -> None:
    """Make the dock holding ``widget`` up to ``share`` of its window's height (as tall as its
    contents ask for), taken from the docks beside it."""
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    dock, window = widget.parentWidget(), widget.window()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    if dock is None or not isinstance(window, QMainWindow) or dock.isFloating():
        return
    want = min(widget.sizeHint().height() + 40, int(share * window.height()))
    if want > dock.height():
        window.resizeDocks([dock], [want], Qt.Orientation.Vertical)


def show_row(form: QFormLayout, field: QWidget, visible: bool) -> None:
    """Show or hide a form row (its label too)."""
    if hasattr(form, "setRowVisible"):  # Qt >= 6.4
        form.setRowVisible(field, visible)
        return
    label = form.labelForField(field)
    for w in (label, field):
        if w is not None:
            w.setVisible(visible)


class Section(QWidget):
    """A titled, collapsible part of a dock (collapsed by default): the "advanced" fields."""

    def __init__(self, title: str, expanded: bool = False):
        super().__init__()
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.toggle.setStyleSheet("QToolButton { border: none; }")
        self.body = QWidget()
        self.form = QFormLayout(self.body)
        self.form.setContentsMargins(12, 0, 0, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.toggle)
        layout.addWidget(self.body)
        self.toggle.toggled.connect(self.expand)
        self.expand(expanded)

    @property
    def expanded(self) -> bool:
        return self.toggle.isChecked()

    def expand(self, on: bool = True) -> None:
        self.toggle.setChecked(on)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.body.setVisible(on)


class ParamForm(QWidget):
    """Inputs for a tuple of :class:`~napari_patchdiff.params.Param` (a registry entry's).

    Numbers are typed as text, choices are combo boxes, flags check boxes. With ``prefill``
    (operators) the inputs start at the declared defaults. Without it (methods) they start
    empty / "auto": nothing is sent, so the method resolves its own default for the operator and
    noise level, exactly as from Python or the CLI (:meth:`show_defaults` shows those values
    as placeholders); only what the user sets is sent.
    """

    def __init__(self, params: tuple[Param, ...] = (), skip=(), prefill: bool = True,
                 labels: dict[str, str] | None = None):
        super().__init__()
        self.params = [p for p in params if p.name not in skip]
        self.inputs: dict[str, QWidget] = {}
        self.hidden: set[str] = set()
        self._form = form = QFormLayout(self)
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
            form.addRow((labels or {}).get(p.name, p.name.replace("_", " ")), w)
            self.inputs[p.name] = w

    def __contains__(self, name: str) -> bool:
        return name in self.inputs

    def hide_params(self, names) -> None:
        """Hide the rows of ``names`` (and show the others): parameters that do not apply here
        (e.g. those along z for one slice). Hidden values are not sent."""
        self.hidden = set(names) & set(self.inputs)
        for name, w in self.inputs.items():
            show_row(self._form, w, name not in self.hidden)

    def shown(self) -> list[str]:
        return [p.name for p in self.params if p.name not in self.hidden]

    def values(self) -> dict[str, Any]:
        """The values set in the shown rows (InputError for text that is not a number)."""
        out = {}
        for p in self.params:
            if p.name in self.hidden:
                continue
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

    def set(self, params, skip=(), prefill: bool = True, labels=None) -> ParamForm:
        self.form.setParent(None)
        self.form.deleteLater()
        self.form = ParamForm(params, skip, prefill, labels)
        self.layout().addWidget(self.form)
        return self.form

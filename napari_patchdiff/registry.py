"""A name -> object registry: the operators (``operators.OPERATORS``) and the reconstruction
methods (``solvers.SOLVERS``). The CLI, the Python API and the napari widgets build their
choices from these. (Priors are found by name among the shipped checkpoint files,
``priors.shipped_priors``.)
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str = "") -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            self._docs[name] = doc or (getattr(obj, "__doc__", "") or "").strip().split("\n")[0]
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items))
            raise InputError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def doc(self, name: str) -> str:
        return self._docs[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

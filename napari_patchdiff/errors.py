"""The project's exception types."""


class InputError(ValueError):
    """Bad user input (shape, dtype, NaN, unknown name, unreadable file), with a clear message."""


class SolverError(RuntimeError):
    """A failure inside a solver (a torch error, out of memory), re-raised with context.

    Thread workers in napari swallow plain ``RuntimeError``; the GUI layer re-raises core
    failures as this type so that they reach the user.
    """

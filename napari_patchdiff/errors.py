"""The project's exception types."""


class InputError(ValueError):
    """Bad user input (shape, dtype, NaN, unknown name, unreadable file), with a clear message."""


class SolverError(RuntimeError):
    """A failure inside a solver (a torch error, out of memory), re-raised with context."""


class JobError(Exception):
    """A background job (GUI worker) failed; the message is meant for the user.

    Deliberately NOT a ``RuntimeError``: napari's (superqt's) generator workers swallow a
    ``RuntimeError`` raised in the generator (neither ``errored`` nor ``finished`` fires), so the
    GUI layer re-raises torch errors, out-of-memory and other failures as this type.
    """

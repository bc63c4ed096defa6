"""The project's exception types."""


class InputError(ValueError):
    """Bad user input (shape, dtype, NaN, unknown name, unreadable file), with a clear message."""


class InputWarning(UserWarning):
    """Input used as given although it disagrees with what its file says (an explicit modality
    over the sidecar's, what tifffile reported about a file it read): a note for the user; the
    CLI shows each as one ``napari-patchdiff: note: ...`` line on stderr."""


class SolverError(RuntimeError):
    """A failure inside a solver (a torch error, out of memory), re-raised with context."""


class JobError(Exception):
    """A background job (GUI worker) failed; the message is meant for the user.

    Deliberately NOT a ``RuntimeError``: napari's (superqt's) generator workers swallow a
    ``RuntimeError`` raised in the generator (neither ``errored`` nor ``finished`` fires), so the
    GUI layer re-raises torch errors, out-of-memory and other failures as this type.
    """

"""Errors that reach the user as one line."""
import difflib


class PtqconvError(Exception):
    """An error caused by the user's input (file, option, data); printed as one line, no traceback."""


class ModelFormatError(PtqconvError):
    """A model file is malformed. The message names the file and the offset or line."""

    def __init__(self, path, where, message):
        self.path, self.where = str(path), where
        loc = f"{self.path}" + (f" ({where})" if where not in (None, "") else "")
        super().__init__(f"{loc}: {message}")


class UnsupportedOpsError(PtqconvError):
    """Several ops or layers cannot be converted; all of them are listed."""

    def __init__(self, source, items):
        self.items = sorted(set(items))
        super().__init__(f"{source}: unsupported op(s): " + ", ".join(self.items))


def did_you_mean(word, choices):
    """Return ' (did you mean X?)' for the closest of ``choices``, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(kind, name, choices):
    """Build the error for an unknown plugin-provided name, listing what exists."""
    known = ", ".join(sorted(choices)) or "none"
    return PtqconvError(f"unknown {kind} '{name}'{did_you_mean(name, choices)}; available: {known}")

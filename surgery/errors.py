"""The one error root of surgery and its few subclasses.

Every problem a user can fix (a bad file, a bad map, a plan that cannot be
carried out) is raised as a ``SurgeryError`` whose message names the file or
layer, says what was expected and what was found, and how to fix it. The CLI
turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations


class SurgeryError(Exception):
    """Root of every error surgery raises on purpose."""


class FormatError(SurgeryError):
    """A checkpoint file is unreadable, truncated, lying or of an unknown kind."""


class UnsafePickleError(FormatError):
    """A PyTorch pickle needs more than ``weights_only`` allows."""


class MapError(SurgeryError):
    """A ``map.yaml`` is malformed or names something that does not exist."""


class PlanError(SurgeryError):
    """Two graphs cannot be paired as asked (shape mismatch, ambiguity...)."""


def fail(path: object, problem: str, cls: type[SurgeryError] = FormatError) -> SurgeryError:
    """Build an error whose message starts with the file it is about."""
    return cls(f"{path}: {problem}")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (a framework's error can run to pages), or its type."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__

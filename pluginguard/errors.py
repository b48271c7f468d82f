"""The errors PluginGuard raises; each one's text is written for the person who reads it."""

from __future__ import annotations


class PluginGuardError(Exception):
    """Root of every error PluginGuard raises on purpose.

    ``str(error)`` is a complete, one-line message for a cluster admin or a pipeline log.
    """


class InputError(PluginGuardError):
    """Input that cannot be used at all: unreadable file, bad YAML, PEM, base64 or field.

    ``where`` names the place (a file, a field path such as ``spec.sandbox.seccomp.allow[2]``)
    and ``problem`` what is wrong with it.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}" if where else problem)

    def within(self, outer: str) -> InputError:
        """The same error, its place prefixed by ``outer`` (a file name, say)."""
        if not outer:
            return self
        where = f"{outer}: {self.where}" if self.where else outer
        return InputError(where, self.problem)


def shown(text: str, limit: int = 80) -> str:
    """``text`` quoted for a message, cut short when it is longer than ``limit``: input
    of any size may reach a message, and the line must stay readable."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"

"""The project's user-facing error type.

Every mistake a user can make (a bad file, bad JSON, an impossible architecture, a missing
dataset) is raised as a :class:`UserError`; the CLI prints it as one line and exits with status 2.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as ``<what> (<where>): <how to fix>``.

    Args:
        what: What is wrong, with the value received.
        where: The file, path, flag or JSON path it concerns.
        fix: How to fix it.

    Example:
        >>> raise UserError("no decodable frame", "clip.mp4", "check the file plays")
    """

    def __init__(self, what: str, where: str, fix: str) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(f"{what} ({where}): {fix}")

    def __reduce__(self) -> tuple:
        # Ray pickles exceptions across processes; rebuild from the three parts, not args.
        return (type(self), (self.what, self.where, self.fix))

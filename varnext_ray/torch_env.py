"""torch's own environment variables, read when torch is imported.

``import torch`` parses ``TORCH_LOGS`` and opens ``TORCH_LOGS_OUT`` at once: an empty
``TORCH_LOGS`` raised an AttributeError from torch's logging, a name torch does not know
(``TORCH_LOGS=bogus``) a ValueError, a ``TORCH_LOGS_OUT`` in a folder that does not exist a
FileNotFoundError, each before any of the command's checks and reported as a varnext bug.
The commands that use torch import it here first, so such a variable is one line naming it.
"""

from __future__ import annotations

import os

from varnext_ray.errors import UserError

# The prefixes of the variables torch reads (TORCH_LOGS, TORCH_LOGS_OUT, TORCH_LOGS_FORMAT,
# TORCH_*_DEBUG, PYTORCH_*): an import that fails with none of them set is not the user's.
PREFIXES = ("TORCH_", "PYTORCH_")


def check_torch_starts() -> None:
    """Imports torch; a UserError naming the torch variables set when that import fails."""
    try:
        import torch  # noqa: F401
    except Exception as err:
        named = sorted(n for n in os.environ if n.startswith(PREFIXES))
        if not named:
            raise
        said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        settings = ", ".join(f"{n}={os.environ[n]!r}" for n in named)
        raise UserError(
            f"torch cannot start with {settings} set: {said}",
            "environment",
            f"unset {' or '.join(named)}, or set what torch accepts "
            "(TORCH_LOGS: a comma list of log names such as +dynamo or graph_breaks; "
            "TORCH_LOGS_OUT: a file in a folder that exists)",
        ) from None

"""Numbers written as text (command-line options, JSON files), read without silent changes.

``float()`` reads several texts as another number than the one written: ``1e-400`` as 0.0,
``1e-320`` as a subnormal that has lost most of its digits, ``1e309`` as infinity, ``nan`` as no
number at all. A learning rate of ``1e-320`` then trained nothing and a ``--val 1e-400`` split
held no frames, both without a word. :func:`read_float` refuses them instead, with a message that
says what to write; the command line (``cli_args.float_arg``) and JSON (``safe_io.parse_json``)
both read through it, so the same text is described the same way everywhere.

    >>> read_float("2.5e-3")
    0.0025
    >>> read_float("1e-400")
    Traceback (most recent call last):
    ...
    ValueError: 1e-400 is too small for a number: it reads as 0 (pass 0, or a number >= 2.2e-308)
"""

from __future__ import annotations

import math
import re
import sys
import unicodedata

SMALLEST = sys.float_info.min  # 2.2e-308: below it a float keeps fewer digits, then none
_SHOWN = 40  # characters of the text a message quotes


def read_float(text: str, *, finite: bool = True) -> float:
    """The number ``text`` writes, refusing one ``float()`` would change.

    Args:
        text: As ``float()`` takes it (surrounding spaces, ``_`` between digits, ``inf``).
        finite: Refuse ``nan``, ``inf`` and numbers too large for a float (which read as
            infinity). False lets them through for a validator that names the field.

    Raises:
        ValueError: not a number, or one a float cannot hold; the message quotes the text.
    """
    value = float(text)
    shown = text.strip()[:_SHOWN]
    if finite and math.isnan(value):
        raise ValueError(f"{shown} is not a number (pass a finite number)")
    if finite and math.isinf(value):
        too = "too large for a number" if _has_digits(text) else "not a finite number"
        raise ValueError(f"{shown} is {too} (pass a finite number)")
    if (value == 0 and _has_digits(text)) or 0 < abs(value) < SMALLEST:
        reads = "reads as 0" if value == 0 else f"reads as {value:.3g}, losing precision"
        raise ValueError(
            f"{shown} is too small for a number: it {reads} (pass 0, or a number >= {SMALLEST:.2g})"
        )
    return value


def _has_digits(text: str) -> bool:
    """True if ``text``'s mantissa (before an exponent) has a digit other than 0."""
    mantissa = re.split(r"[eE]", text.strip(), maxsplit=1)[0]
    return any(unicodedata.digit(ch, 0) for ch in mantissa)


def decimal_order(text: str) -> tuple[int, str]:
    """A sort key that orders strings of ASCII digits as the numbers they write, whatever their
    length: ``int()`` refuses more than 4,300 digits, and a hand-edited MLflow store can name a
    metric ``extrap_psnr_h`` followed by 5,000 of them.

    >>> sorted(["10", "9", "007"], key=decimal_order)
    ['007', '9', '10']
    """
    digits = text.lstrip("0")
    return len(digits), digits

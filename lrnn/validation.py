"""Checks of scalar arguments shared by every layer of lrnn (ops, layers, models, tasks, training).

Each raises ``TypeError`` (wrong kind) or ``ValueError`` (out of range) naming the argument, what was
expected and what was given. ``bool`` is not accepted as an int (``True`` is not a size).
"""

from __future__ import annotations


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (either bound optional); returns it."""
    bounds = " and ".join(part for part in (None if minimum is None else f">= {minimum}",
                                           None if maximum is None else f"<= {maximum}") if part)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int{' ' + bounds if bounds else ''}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def check_positive(**sizes: object) -> None:
    """Raise a clear error unless every named value is an int >= 1: ``check_positive(d_model=d_model)``."""
    for name, value in sizes.items():
        check_int(name, value, 1)


def check_flag(name: str, value: object) -> bool:
    """``value`` if it is a bool (not 0 / 1 or a string); returns it."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_number(name: str, value: object, minimum: float | None = None, *, strict: bool = False) -> float:
    """``value`` as a real number (int or float, not bool) >= minimum (> with ``strict``); NaN is a number
    out of every range (ValueError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if value != value:
        raise ValueError(f"{name} must be a number{'' if minimum is None else ' >= ' + str(minimum)}, got nan")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return value

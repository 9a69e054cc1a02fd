"""Argument checks shared by the package: errors name the bad value and list what is allowed."""
from typing import Sequence


def check_choice(what: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f'unknown {what} {value!r}; allowed: {", ".join(map(repr, allowed))}')

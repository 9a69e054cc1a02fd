"""Generated sections of the README: text between `<!-- name:start -->` and `<!-- name:end -->`.

Scripts that measure something write their table there, so every number in the README comes
from a command that can be rerun.
"""
import sys
from pathlib import Path
from typing import Optional


def markers(name: str) -> tuple[str, str]:
    return f'<!-- {name}:start -->', f'<!-- {name}:end -->'


def replace_section(text: str, name: str, body: str) -> str:
    start, end = markers(name)
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f'expected exactly one {start} ... {end} section')
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f'{head}{start}\n{body}{end}{tail}'


def check_section(readme: Optional[Path], name: str) -> None:
    """Exit, naming the file, unless `readme` (when given) has the section: before minutes of timing, not after."""
    if readme:
        try:
            replace_section(readme.read_text(), name, '')
        except (OSError, ValueError) as e:
            sys.exit(f'{readme}: {e}')


def write_section(path: Path, name: str, body: str) -> None:
    path.write_text(replace_section(path.read_text(), name, body))


def print_and_write(table: str, readme: Optional[Path], name: str) -> None:
    """Print a generated table and, when a README is given, write it into that section."""
    print(table, end='')
    if readme:
        try:
            write_section(readme, name, table)
        except ValueError as e:
            sys.exit(f'{readme}: {e}')

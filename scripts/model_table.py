"""Print the zoo's model table: the family table of xsep_zoo.MODELS with params and MACs at an input size.

    python scripts/model_table.py                      # markdown table to stdout
    python scripts/model_table.py --readme README.md   # also rewrite the table section of the README
"""
import argparse
from pathlib import Path

import timm

from readme_section import print_and_write
from xsep_zoo import MODELS, count_cost

SECTION = 'model-table'


def model_table(input_size: int) -> str:
    command = f'python scripts/model_table.py --input-size {input_size}'
    lines = [
        f'Params and MACs (multiply-adds of convs and linear layers) at {input_size}x{input_size}, 10 classes, '
        f'written by `{command}`.',
        '',
        '| model | what it tests | paper | DW partner | params (M) | MACs (M) |',
        '|---|---|---|---|---:|---:|',
    ]
    for name, model in MODELS.items():
        cost = count_cost(timm.create_model(name), (3, input_size, input_size))
        partner = f'`{model.dw_partner}`' if model.dw_partner else ''
        lines.append(f'| `{name}` | {model.description} | {model.paper} | {partner} '
                     f'| {cost.params / 1e6:.3f} | {cost.macs / 1e6:.2f} |')
    return '\n'.join(lines) + '\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input-size', type=int, default=32, help='square input side in pixels (default: 32)')
    parser.add_argument('--readme', type=Path, help=f'rewrite the {SECTION} section of this file')
    args = parser.parse_args()
    print_and_write(model_table(args.input_size), args.readme, SECTION)


if __name__ == '__main__':
    main()

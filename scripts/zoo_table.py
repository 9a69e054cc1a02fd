"""The zoo's results table and plot, generated from the Hub folders in hub_cards/.

    python scripts/zoo_table.py                       # print the markdown table
    python scripts/zoo_table.py --readme README.md    # also rewrite the README's zoo-table section and the plot

Every figure comes from a folder's config.json (written by scripts/export.py from its own
evaluation and the counter). The plot, top-1 against MACs, is hub_cards/zoo_top1_vs_macs.png and
needs matplotlib (`pip install -e '.[plot]'`).
"""
import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from timm.models import model_entrypoint

import xsep_zoo  # noqa: F401  registers the models
from readme_section import print_and_write
from xsep_zoo.hub import CONFIG_NAME, local_hub_root

ROOT = Path(__file__).resolve().parents[1]
SECTION = 'zoo-table'
PLOT_NAME = 'zoo_top1_vs_macs.png'
# What in the paper each model corresponds to, by the part of its name after 'mobilenetv3_small_'.
PAPER = {
    'dw': 'Table 1, Fig. 3 (DWConv)', 'xsep': 'Table 1, Fig. 3 (XSepConv)',
    'dw_k7': 'Fig. 5 (DWConv 7x7)', 'xsep_k7': 'Fig. 5 (XSepConv k=7)',
    'dw_ds7': 'Fig. 4 (DWConv 7x7 downsampling)', 'xsep_ds7': 'Fig. 4 (downsampling XSepConv)',
    'xsep_no2x2': 'Table 2, Fig. 7 (w/o 2x2 DW)', 'xsep_b': 'Table 3, Fig. 7 (XSepConv-B)',
    'xsep_p': 'Table 3, Fig. 7 (XSepConv-P)', 'xsep_sympad': 'Table 3 (Original-Padding)',
    'xsep_asympad': 'not in the paper (one-sided padding)',
}


def variant(architecture: str) -> str:
    """'mobilenetv3_small_xsep_k7_100' -> 'xsep_k7'."""
    return architecture.removeprefix('mobilenetv3_small_').rsplit('_', 1)[0]


def load_results(root: Path) -> list[dict]:
    rows = []
    for config_path in sorted(root.glob(f'*/{CONFIG_NAME}')):
        config = json.loads(config_path.read_text())
        results = config['xsep_zoo']
        rows.append(dict(folder=config_path.parent.name, architecture=config['architecture'],
                         seed=results['recipe']['seed'], **results))
    return rows


def zoo_table(rows: list[dict], plot_link: str) -> str:
    lines = [
        'Top-1 on the whole test split, measured by `scripts/export.py` on the exported weights; MACs and params '
        'from the counter; written by `python scripts/zoo_table.py --readme README.md`.',
        '',
        '| model (Hub folder) | what it tests | seed | top-1 (%) | top-5 (%) | MACs (M) | params (M) | paper |',
        '|---|---|---:|---:|---:|---:|---:|---|',
    ]
    by_architecture = defaultdict(list)
    for r in rows:
        by_architecture[r['architecture']].append(r)
        doc = model_entrypoint(r['architecture']).__doc__.strip()
        lines.append(f'| `{r["folder"]}` | {doc} | {r["seed"]} | {r["top1"]:.2f} | {r["top5"]:.2f} '
                     f'| {r["macs"] / 1e6:.2f} | {r["params"] / 1e6:.3f} | {PAPER[variant(r["architecture"])]} |')
    for architecture, runs in by_architecture.items():
        if len(runs) > 1:
            top1 = [r['top1'] for r in runs]
            lines.append(f'| `{architecture}`, mean of {len(runs)} seeds | | | {statistics.mean(top1):.2f} '
                         f'(sd {statistics.stdev(top1):.2f}) | | | | |')
    lines += ['', f'![top-1 against MACs, DW vs XSepConv]({plot_link})']
    return '\n'.join(lines) + '\n'


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    series = defaultdict(lambda: defaultdict(list))  # DW / XSepConv width curves: MACs -> top-1 of each seed
    for r in rows:
        v = variant(r['architecture'])
        kind = 'XSepConv' if v.startswith('xsep') else 'DWConv'
        if v in ('dw', 'xsep'):
            series[kind][r['macs'] / 1e6].append(r['top1'])
            continue
        ax.scatter(r['macs'] / 1e6, r['top1'], marker='s' if kind == 'XSepConv' else 'o', facecolors='none',
                   edgecolors='tab:orange' if kind == 'XSepConv' else 'tab:blue')
        ax.annotate(v, (r['macs'] / 1e6, r['top1']), textcoords='offset points', xytext=(4, 3), fontsize=7)
    for kind, color, marker in (('DWConv', 'tab:blue', 'o'), ('XSepConv', 'tab:orange', 's')):
        by_macs = series[kind]
        if by_macs:  # the curve through the mean of the seeds, each seed a small dot
            macs = sorted(by_macs)
            ax.plot(macs, [statistics.mean(by_macs[m]) for m in macs], color=color, marker=marker,
                    label=f'{kind} (MobileNetV3-Small, widths; mean of seeds)')
            seeds = [(m, top1) for m in macs if len(by_macs[m]) > 1 for top1 in by_macs[m]]
            if seeds:
                ax.scatter(*zip(*seeds), color=color, marker=marker, s=10, alpha=0.5)
    ax.set_xlabel('MACs (M), 32x32 input')
    ax.set_ylabel('CIFAR-10 top-1 (%)')
    ax.set_title('xsep-zoo: top-1 vs MACs (hollow markers: ablations and kernel-size variants)', fontsize=9)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, metadata={'Software': None})
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--hub-root', type=Path, help="default: the repository's hub_cards/")
    p.add_argument('--readme', type=Path, help=f'rewrite the {SECTION} section of this file, and the plot')
    args = p.parse_args(argv)
    root = (args.hub_root or local_hub_root()).resolve()
    rows = load_results(root)
    if args.readme:
        plot(rows, root / PLOT_NAME)
    print_and_write(zoo_table(rows, plot_link=_relative(root / PLOT_NAME)), args.readme, SECTION)


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == '__main__':
    main()

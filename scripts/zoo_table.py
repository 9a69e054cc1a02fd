"""The zoo's results table and plot, generated from the Hub folders in hub_cards/.

    python scripts/zoo_table.py                       # print the markdown table
    python scripts/zoo_table.py --readme README.md    # also rewrite the README's zoo-table section and the plot

Every figure comes from a folder's config.json (written by scripts/export.py from its own
evaluation and the counter). The plot, top-1 against MACs, is hub_cards/zoo_top1_vs_macs.png and
needs matplotlib (`pip install -e '.[plot]'`).
"""
import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from readme_section import print_and_write
from xsep_zoo import MODELS
from xsep_zoo.hub import RECORD_NAME, local_hub_root
from xsep_zoo.recipe import recipe_name

ROOT = Path(__file__).resolve().parents[1]
SECTION = 'zoo-table'
PLOT_NAME = 'zoo_top1_vs_macs.png'
WIDTH_SWEEP = ('dw', 'xsep')  # the arch variants of the paper's Fig. 3, one model per width


def load_results(root: Path) -> list[dict]:
    rows = []
    for record_path in sorted(root.glob(f'*/{RECORD_NAME}')):
        results = json.loads(record_path.read_text())
        rows.append(dict(folder=record_path.parent.name, architecture=results['model'],
                         seed=results['recipe']['seed'], recipe_name=recipe_name(results['recipe']),
                         **results))
    return rows


def recipe_label(epochs: int, recipe_name: str) -> str:
    """'20 epochs', or '20 epochs, <name> recipe' for a named recipe other than the paper's."""
    return f'{epochs} epochs' + ('' if recipe_name == 'paper' else f', {recipe_name} recipe')


def _seeds_of_one_recipe(rows: list[dict]) -> dict:
    """Rows grouped by (architecture, recipe label): only runs of the same length and recipe are seeds of one result."""
    groups = defaultdict(list)
    for r in rows:
        groups[r['architecture'], recipe_label(r['epochs'], r['recipe_name'])].append(r)
    return groups


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Lentz's method)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below its mean: use the symmetry there
        return 1 - _betainc(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2:
            numerator = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            numerator = (m * (b - m) * x) / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1 + numerator * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + numerator / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1 - c * d) < 1e-14:
            break
    return front * (f - 1)


def welch_t_test(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Welch's t-test of the means of `a` and `b` (unequal variances): t, degrees of freedom, two-sided p."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t, df, _betainc(df / 2, 0.5, df / (df + t * t))


def _pairs_with_seeds(rows: list[dict]):
    """(XSepConv model, its DW partner, their runs) for each length and recipe with two or more seeds of each."""
    groups = _seeds_of_one_recipe(rows)
    for (architecture, recipe), runs in groups.items():
        partner = MODELS[architecture].dw_partner
        dw = groups.get((partner, recipe), [])
        if partner is not None and len(runs) >= 2 and len(dw) >= 2:
            yield architecture, partner, recipe, runs, dw


def comparison_lines(rows: list[dict]) -> list[str]:
    """Each XSepConv model against its DW partner, per recipe length with two or more seeds of each."""
    lines = []
    for architecture, partner, recipe, runs, dw in _pairs_with_seeds(rows):
        x, y = [r['top1'] for r in runs], [r['top1'] for r in dw]
        t, df, p = welch_t_test(x, y)
        lines.append(
            f'- {recipe}: `{architecture}` {statistics.mean(x):.2f} (sd {statistics.stdev(x):.2f}, seeds '
            f'{", ".join(str(r["seed"]) for r in runs)}) against `{partner}` {statistics.mean(y):.2f} (sd '
            f'{statistics.stdev(y):.2f}, seeds {", ".join(str(r["seed"]) for r in dw)}): '
            f'{statistics.mean(x) - statistics.mean(y):+.2f} points, Welch\'s t-test t = {t:.2f}, df = {df:.1f}, '
            f'p = {p:.3f}')
    return lines


def recipe_lines(rows: list[dict]) -> list[str]:
    """Recipes ranked, for each XSepConv model and its DW partner trained at one length under two or more recipes
    with two or more seeds of each: by the mean of the two architectures' seed means. The better recipe is the
    one the zoo trains the pair's other widths with."""
    means = defaultdict(dict)  # (architecture, partner, epochs) -> recipe name -> mean of the two seed means
    for architecture, partner, _, runs, dw in _pairs_with_seeds(rows):
        means[architecture, partner, runs[0]['epochs']][runs[0]['recipe_name']] = \
            (statistics.mean(r['top1'] for r in runs) + statistics.mean(r['top1'] for r in dw)) / 2
    lines = []
    for (architecture, partner, epochs), by_recipe in means.items():
        if len(by_recipe) < 2:
            continue
        ranked = sorted(by_recipe, key=by_recipe.get, reverse=True)
        lines.append(f'- {epochs} epochs, `{architecture}` and `{partner}`, mean of the two architectures\' seed '
                     'means: ' + ', '.join(f'{recipe} recipe {by_recipe[recipe]:.2f}' for recipe in ranked)
                     + f'; the better is {ranked[0]}')
    return lines


def _seed_count(xsep: list[dict], dw: list[dict]) -> str:
    n, m = len(xsep), len(dw)
    return f'{n} seed{"s" * (n > 1)} each' if n == m else f'{n} and {m} seeds'


def width_lines(rows: list[dict]) -> list[str]:
    """XSepConv against DW at each width of the paper's Fig. 3, per length and recipe with two or more widths:
    the difference of the two mean top-1 over seeds, and at how many widths XSepConv is ahead."""
    groups = _seeds_of_one_recipe(rows)
    widths = defaultdict(list)  # recipe label -> (width, XSepConv runs, DW runs)
    for (architecture, recipe), runs in groups.items():
        model = MODELS[architecture]
        dw = groups.get((model.dw_partner, recipe))
        if model.arch in WIDTH_SWEEP and dw:
            widths[recipe].append((model.multiplier, runs, dw))
    lines = []
    for recipe, pairs in widths.items():
        if len(pairs) < 2:
            continue
        diffs = [(w, statistics.mean(r['top1'] for r in x) - statistics.mean(r['top1'] for r in d), x, d)
                 for w, x, d in sorted(pairs, key=lambda pair: pair[0])]
        ahead = sum(diff > 0 for _, diff, _, _ in diffs)
        lines.append(f'- {recipe}: ' + ', '.join(f'width {w:.2f} {diff:+.2f} ({_seed_count(x, d)})'
                                                 for w, diff, x, d in diffs)
                     + f'; XSepConv is ahead at {ahead} of {len(diffs)} widths')
    return lines


def zoo_table(rows: list[dict], plot_link: str) -> str:
    lines = [
        'Top-1 on the whole test split, measured by `scripts/export.py` on the exported weights; MACs and params '
        'from the counter; written by `python scripts/zoo_table.py --readme README.md`.',
        '',
        '| model (Hub folder) | what it tests | recipe | seed | top-1 (%) | top-5 (%) | MACs (M) | params (M) '
        '| paper |',
        '|---|---|---|---:|---:|---:|---:|---:|---|',
    ]
    for r in rows:
        model = MODELS[r['architecture']]
        lines.append(f'| `{r["folder"]}` | {model.description} | {recipe_label(r["epochs"], r["recipe_name"])} '
                     f'| {r["seed"]} | {r["top1"]:.2f} '
                     f'| {r["top5"]:.2f} | {r["macs"] / 1e6:.2f} | {r["params"] / 1e6:.3f} | {model.paper} |')
    for (architecture, recipe), runs in _seeds_of_one_recipe(rows).items():
        if len(runs) > 1:
            top1 = [r['top1'] for r in runs]
            lines.append(f'| `{architecture}`, mean of {len(runs)} seeds | | {recipe} | | {statistics.mean(top1):.2f} '
                         f'(sd {statistics.stdev(top1):.2f}) | | | | |')
    comparison = comparison_lines(rows)
    if comparison:
        lines += ['', 'XSepConv against its DW partner, top-1 mean over seeds (sd) and the difference:', '', *comparison]
    by_width = width_lines(rows)
    if by_width:
        lines += ['', "XSepConv minus DW at each width of the paper's Fig. 3, mean top-1 over seeds, in points:", '',
                  *by_width]
    ranking = recipe_lines(rows)
    if ranking:
        lines += ['', 'Recipes compared on the same pair (the better one trains the pair at its other widths):', '',
                  *ranking]
    lines += ['', f'![top-1 against MACs, DW vs XSepConv]({plot_link})']
    return '\n'.join(lines) + '\n'


MARKER_RADIUS_PT = 3  # half the side of a plotted marker (markersize 6, and scatter's default s=36 pt²), in points


def marker_box(ax, x: float, y: float):
    """The display-space box a marker at data point (x, y) covers."""
    from matplotlib.transforms import Bbox
    cx, cy = ax.transData.transform((x, y))
    r = MARKER_RADIUS_PT * ax.figure.dpi / 72
    return Bbox.from_extents(cx - r, cy - r, cx + r, cy + r)


def _annotate_without_overlap(ax, points: list[tuple[float, float, str]], markers=()) -> None:
    """Label each point beside it, moving a label to the first free spot when another label or a marker
    (`markers`: data points of the other plotted markers) is in the way.

    Variants often share MACs and land within a tenth of a point of each other, and of the width
    curves' points: a label at one fixed offset then prints over another, or names the wrong marker.
    """
    renderer = ax.figure.canvas.get_renderer()
    right = [(4, 3 + 10 * k) for k in (0, -1, 1, -2, 2, -3, 3)]
    candidates = right + [(-4, y) for _, y in right]  # left of the point only when the right side is full
    placed = [marker_box(ax, x, y) for x, y in markers]
    for macs, top1, label in sorted(points, key=lambda p: (-p[1], p[0])):
        text = ax.annotate(label, (macs, top1), xytext=candidates[0], textcoords='offset points', fontsize=7,
                           va='center')
        for dx, dy in candidates:  # when every spot is taken the label stays at the last: it is never dropped
            text.xyann = (dx, dy)
            text.set_horizontalalignment('left' if dx > 0 else 'right')
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(box)
        if (dx, dy) != candidates[0]:  # a thin line leads from a moved label to its point
            ax.annotate('', (macs, top1), textcoords='offset points', xytext=(dx, dy),
                        arrowprops=dict(arrowstyle='-', lw=0.4, color='0.5'))


def curve_label(kind: str, recipe: str, by_macs: dict) -> str:
    """A legend entry that says what the curve averages: a lone run is not a mean of seeds."""
    parts = ['MobileNetV3-Small widths'] if len(by_macs) > 1 else []
    parts += ['mean of seeds'] if any(len(seeds) > 1 for seeds in by_macs.values()) else []
    return f'{kind}, {recipe} ({"; ".join(parts) or "one run"})'


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    shortest = min((r['epochs'] for r in rows), default=None)  # the zoo's recipe; longer ones are marked
    # Width curves, one per kind and recipe: (kind, epochs, recipe name) -> MACs -> top-1 of each seed
    series = defaultdict(lambda: defaultdict(list))
    labelled = []  # (MACs, top-1, label) of the hollow markers
    markers = []  # (MACs, top-1) of every marker, which no label may cover
    for r in rows:
        model = MODELS[r['architecture']]
        v = model.arch
        kind = 'XSepConv' if model.dw_partner else 'DWConv'  # only the baselines have no DW partner
        if v in WIDTH_SWEEP:
            series[kind, r['epochs'], r['recipe_name']][r['macs'] / 1e6].append(r['top1'])
            continue
        ax.scatter(r['macs'] / 1e6, r['top1'], marker='s' if kind == 'XSepConv' else 'o', facecolors='none',
                   edgecolors='tab:orange' if kind == 'XSepConv' else 'tab:blue')
        labelled.append((r['macs'] / 1e6, r['top1'], v if r['epochs'] == shortest else f'{v} ({r["epochs"]} epochs)'))
        markers.append((r['macs'] / 1e6, r['top1']))
    for (kind, epochs, name), by_macs in sorted(series.items(), key=lambda item: (item[0][1], item[0][2], item[0][0])):
        color, marker = ('tab:orange', 's') if kind == 'XSepConv' else ('tab:blue', 'o')
        longer = epochs != shortest  # its own dashed curve with star markers
        macs = sorted(by_macs)  # the curve through the mean of the seeds, each seed a small dot
        ax.plot(macs, [statistics.mean(by_macs[m]) for m in macs], color=color, marker='*' if longer else marker,
                markersize=10 if longer else 6, linestyle='--' if longer else '-' if name == 'paper' else ':',
                label=curve_label(kind, recipe_label(epochs, name), by_macs))
        markers += [(m, statistics.mean(by_macs[m])) for m in macs]
        seeds = [(m, top1) for m in macs if len(by_macs[m]) > 1 for top1 in by_macs[m]]
        markers += seeds
        if seeds:
            ax.scatter(*zip(*seeds), color=color, marker=marker, s=10, alpha=0.5)
    ax.set_xlabel('MACs (M), 32x32 input')
    ax.set_ylabel('CIFAR-10 top-1 (%)')
    ax.set_title('xsep-zoo: top-1 vs MACs (hollow markers: ablations and kernel-size variants)', fontsize=9)
    ax.grid(alpha=0.3)
    if series:  # below the axes: inside, it hid the lowest seed
        ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    fig.tight_layout()
    _annotate_without_overlap(ax, labelled, markers)  # after the layout: it measures the labels where they will print
    fig.savefig(path, bbox_inches='tight', metadata={'Software': None})
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

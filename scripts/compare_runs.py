"""Compare training runs epoch by epoch: what each run changed, and its training loss and test top-1 per epoch.

    python scripts/compare_runs.py runs/a runs/b runs/c
    python scripts/compare_runs.py runs/probe/* --epochs 1 2 5 --readme docs/training-dynamics.md --section probes

Each column is a run directory of scripts/train.py, or a published Hub folder that kept its log; its
heading names the model and the settings in which it differs from the other runs (from each run's
config.json, or the folder's xsep_zoo.json), so a table of short trainings shows what was tried.
Cells are `training loss / test top-1 %` from the log.jsonl; a run that has not reached an epoch
shows a dash.
"""
import argparse
import json
import sys
from pathlib import Path

from readme_section import check_section, print_and_write
from xsep_zoo.hub import RECORD_NAME
from xsep_zoo.recipe import PAPER_CHOICES, recipe_name

# Settings that say where or how fast a run ran, not what it trained: never a difference worth a column heading.
NOT_RECIPE = ('data_source', 'eval_batch_size')
# Settings that runs recorded before they existed trained with: a missing one is not a difference.
WHEN_MISSING = dict(**PAPER_CHOICES, data_on_device=False)


def read_run(run_dir: Path) -> dict:
    try:
        if (run_dir / RECORD_NAME).is_file():  # a Hub folder: its record keeps the run's configuration
            config = json.loads((run_dir / RECORD_NAME).read_text())['recipe']
        else:
            config = json.loads((run_dir / 'config.json').read_text())['config']
        log = [json.loads(line) for line in (run_dir / 'log.jsonl').read_text().splitlines()]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f'{run_dir}: not a run of scripts/train.py with a log ({type(e).__name__}: {e})')
    config = {**WHEN_MISSING, **config}
    config['recipe'] = recipe_name(config)  # named by its choices, as the zoo table names it
    return dict(name=run_dir.name, config=config, log={r['epoch']: r for r in log})


def headings(runs: list[dict]) -> list[str]:
    """Per run: its model and the settings whose value is not the same in every run."""
    keys = sorted({k for r in runs for k in r['config']} - set(NOT_RECIPE))
    differing = [k for k in keys if len({json.dumps(r['config'].get(k)) for r in runs}) > 1 and k != 'model']
    return [' '.join([r['config']['model'], *(f'{k}={r["config"].get(k)}' for k in differing)]) for r in runs]


def table(runs: list[dict], epochs: list[int]) -> str:
    lines = ['| epoch | ' + ' | '.join(headings(runs)) + ' |', '|---:|' + '---|' * len(runs)]
    for epoch in epochs:
        cells = []
        for r in runs:
            e = r['log'].get(epoch)
            cells.append(f'{e["train_loss"]:.3f} / {e["test_top1"]:.2f}' if e else '-')
        lines.append(f'| {epoch} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', type=Path, help='run directories of scripts/train.py')
    p.add_argument('--epochs', nargs='+', type=int, help='epochs to show (default: every logged one)')
    p.add_argument('--readme', type=Path, help='also write the table into this markdown file ...')
    p.add_argument('--section', default='compare-runs', help='... between its <!-- SECTION:start/end --> markers')
    args = p.parse_args(argv)
    check_section(args.readme, args.section)
    runs = [read_run(d) for d in args.runs]
    epochs = args.epochs or sorted({e for r in runs for e in r['log']})
    print_and_write(table(runs, epochs), args.readme, args.section)


if __name__ == '__main__':
    main()

"""Turn a finished training run into a Hub repo folder: hub_cards/<model>.<tag>/.

    python scripts/export.py runs/x --tag cifar10 --data-source ../shared/datasets/cifar10

Writes model.safetensors (the run's final weights: the EMA ones when EMA was on), timm's
config.json (with the weights' sha256 and the measured results at its top level) and the model
card README.md. The accuracy is measured here, on the exported weights, over the whole test split;
params and MACs come from the counter. An existing folder is replaced only with --overwrite.
"""
import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path

import timm

import xsep_zoo  # noqa: F401  registers the models
from xsep_zoo import MODELS, count_cost
from xsep_zoo.constants import HUB_ORG
from xsep_zoo.data import DATASETS, DataError, load_test
from xsep_zoo.engine import evaluate_model
from xsep_zoo.hub import WEIGHTS_NAME, WeightsError, load_weights_into, local_hub_root, write_hub_folder
from xsep_zoo.model_card import CardFacts, render_model_card
from xsep_zoo.pretrained import DATASET_CFGS, record_published

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run_dir', type=Path, help='a finished run of scripts/train.py')
    p.add_argument('--tag', help='pretrained tag (default: the dataset name, e.g. cifar10)')
    p.add_argument('--hub-root', type=Path, help='where Hub folders go (default: the repository\'s hub_cards/)')
    p.add_argument('--data-source', help='local dataset folder to evaluate on (default: the one the run used)')
    p.add_argument('--test-limit', type=int, help='evaluate a subset only (tests; a card should use the full split)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing Hub folder')
    return p.parse_args(argv)


def portable(value):
    """An absolute path inside the folder that holds this checkout, relative to the checkout's root.

    Cards show commands run from the repository root; `/home/me/xsep-zoo/scripts/train.py` and
    `/home/me/shared/datasets/cifar10` become `scripts/train.py` and `../shared/datasets/cifar10`.
    Anything else (not a path, or outside that folder) is returned as is.
    """
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    base = ROOT.parent if ROOT.parent != Path(ROOT.anchor) else ROOT  # never all of the file system
    path = Path(os.path.normpath(value))
    return os.path.relpath(path, ROOT) if path.is_relative_to(base) else value


# When a stretch of a run stopped, not what it trains: the card's command trains the whole run in one go.
# --runs-at-once is no longer an option of train.py, but commands recorded by older runs hold it.
SCHEDULING_OPTIONS = ('--time-limit', '--runs-at-once')


def _portable_command(command: str) -> str:
    tokens, kept = shlex.split(command), []
    while tokens:
        token = tokens.pop(0)
        if token in SCHEDULING_OPTIONS:
            tokens.pop(0)  # its value
        elif token.split('=', 1)[0] not in SCHEDULING_OPTIONS:
            kept.append(portable(token))
    return shlex.join(kept)


def _data_description(source) -> str:
    """The local copy's own title (its README's pretty_name), or the Hub id."""
    if source is None:
        return 'the Hub dataset'
    readme = Path(source) / 'README.md'
    if readme.is_file():
        for line in readme.read_text().splitlines():
            if line.startswith('pretty_name:'):
                return f'{line.split(":", 1)[1].strip()}, a local copy at `{portable(source)}`'
    return f'a local copy at `{portable(source)}`'


def _stretches(record: dict, log: list) -> list:
    """The run's epochs in stretches trained on one machine: a resumed run may continue on another.

    Log lines written before epochs named their machine fall back to the run's first machine.
    """
    stretches = []
    for entry in log:
        machine = entry.get('machine', record.get('machine', 'unrecorded'))
        if stretches and stretches[-1]['machine'] == machine:
            stretches[-1]['epochs'][1] = entry['epoch']
            stretches[-1]['seconds'] += entry['seconds']
        else:
            stretches.append(dict(machine=machine, epochs=[entry['epoch']] * 2, seconds=entry['seconds']))
    return stretches


def _where_trained(stretches: list) -> str:
    """The machine a run was trained on, or each machine with its epochs and hours."""
    if len(stretches) == 1:
        return stretches[0]['machine']

    def span(stretch):
        first, last = stretch['epochs']
        return f'epoch {first}' if first == last else f'epochs {first}-{last}'

    return '; '.join(f"{s['machine']} ({span(s)}, {s['seconds'] / 3600:.2f} h)" for s in stretches)


def export_run(args: argparse.Namespace) -> Path:
    record = json.loads((args.run_dir / 'config.json').read_text())
    config = record['config']
    weights = args.run_dir / WEIGHTS_NAME
    if not weights.is_file():
        sys.exit(f'{args.run_dir}: no {WEIGHTS_NAME}; the run has not finished '
                 '(resume it with scripts/train.py --resume)')
    log = [json.loads(line) for line in (args.run_dir / 'log.jsonl').read_text().splitlines()]
    name, dataset, tag = config['model'], config['dataset'], args.tag or config['dataset']
    spec = DATASETS[dataset]
    source = args.data_source or config['data_source']

    model = timm.create_model(name, num_classes=spec.num_classes)
    try:
        load_weights_into(model, weights)
    except WeightsError as e:
        sys.exit(str(e))
    not_finite = [k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
    if not_finite:
        sys.exit(f'{weights}: {len(not_finite)} tensors hold NaN or infinite values ({", ".join(not_finite[:3])}'
                 f'{" ..." if len(not_finite) > 3 else ""}): the run diverged; nothing was exported')
    repo_id = f'{HUB_ORG}/{name}.{tag}'
    input_size = (3, spec.train_size, spec.train_size)
    test_size = (3, spec.image_size, spec.image_size)
    model.pretrained_cfg = {
        **model.pretrained_cfg, 'tag': tag, 'hf_hub_id': repo_id, 'num_classes': spec.num_classes,
        'input_size': input_size, 'test_input_size': test_size if test_size != input_size else None,
        'mean': spec.mean, 'std': spec.std,
        'pool_size': tuple(s // model.total_stride for s in input_size[1:]),
    }
    try:
        test = load_test(dataset, source=source, limit=args.test_limit)
    except DataError as e:
        sys.exit(str(e))
    model.pretrained_cfg['label_names'] = test.classes
    metrics = evaluate_model(model, test, spec)
    if not math.isfinite(metrics['loss']):
        sys.exit(f'{weights}: the test loss is {metrics["loss"]:g}: the weights do not compute finite outputs; '
                 'nothing was exported')
    cost = count_cost(model, test_size)
    stretches = _stretches(record, log)

    recipe = {key: portable(value) if key in ('data_source', 'init_from') else value for key, value in config.items()}
    eval_command = ['python', 'scripts/eval.py', '--model', f'{name}.{tag}', '--pretrained', '--dataset', dataset]
    eval_command += ['--data-source', str(portable(source))] if source else []
    eval_command += ['--limit', str(args.test_limit)] if args.test_limit else []
    facts = CardFacts(
        repo_id=repo_id, model=name, description=MODELS[name].description, dataset=dataset,
        dataset_hub_id=spec.hub_id, data_description=_data_description(source), test_split=spec.test_split,
        metrics=metrics, params=cost.params, macs=cost.macs, input_size=test_size, recipe=recipe,
        train_command=_portable_command(record['command']), eval_command=shlex.join(eval_command),
        train_seconds=sum(entry['seconds'] for entry in log), train_machine=_where_trained(stretches),
        base_model=config.get('init_from') or (name if config.get('pretrained') else None),
    )
    results = dict(dataset=dataset, split=spec.test_split, data_source=portable(source), params=cost.params,
                   macs=cost.macs, macs_input_size=list(test_size), train_seconds=facts.train_seconds,
                   trained_on=stretches, recipe=recipe,
                   **{k: metrics[k] for k in ('top1', 'top5', 'loss', 'count')})
    folder = (args.hub_root or local_hub_root() or Path('hub_cards')) / f'{name}.{tag}'
    try:
        write_hub_folder(folder, model, model.state_dict(), render_model_card(facts), dict(xsep_zoo=results),
                         args.overwrite)
    except FileExistsError as e:
        sys.exit(str(e))
    print(f'{folder}: top-1 {metrics["top1"]:.2f} % on {metrics["count"]} images, '
          f'{cost.params / 1e6:.3f} M params, {cost.macs / 1e6:.2f} M MACs')
    return folder


def main(argv=None) -> Path:
    return export_run(parse_args(argv))


if __name__ == '__main__':
    main()

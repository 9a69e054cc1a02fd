"""Turn a finished training run into a Hub repo folder, hub_cards/<model>.<tag>/, or refresh published ones.

    python scripts/export.py runs/x --tag cifar10 --data-source /path/to/cifar10
    python scripts/export.py --refresh hub_cards/*/      # rewrite cards and configs from their records
    python scripts/export.py --refresh hub_cards/*/ --data-source /path/to/cifar10   # and measure them again

Writes what timm's push_to_hf_hub publishes (model.safetensors: the run's final weights, the EMA ones
when EMA was on; timm's config.json; the model card README.md) and the zoo's own files beside them:
xsep_zoo.json (sha256 of the weights, the architecture they were exported for, the measured results,
the recipe and command), log.jsonl (the run's per-epoch log) and curves.png. The accuracy is measured
here, on the exported weights, over the whole test split; params and MACs come from the counter. An
existing folder is replaced only with --overwrite. --refresh re-renders existing folders from their
records, keeping their weights and figures, so every card shows the zoo as it is now; with
--data-source it first evaluates each folder again on the test data its card names, and rewrites the
folder only when the measurement equals its card, image by image where the record has per-image ranks.
The record's per-image ranks (test_ranks) let anyone check any part of the test set against the card.
"""
import argparse
import json
import math
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

import timm

import xsep_zoo  # noqa: F401  registers the models
from xsep_zoo import MODELS, count_cost
from xsep_zoo.constants import HUB_ORG
from xsep_zoo.data import DATASETS, DataError, describe_source, load_test
from xsep_zoo.engine import evaluate_model
from xsep_zoo.hub import (CARD_NAME, CONFIG_NAME, RANKS_KEY, WEIGHTS_NAME, WeightsError, card_mismatch,
                          load_weights_into, local_hub_root, ranks_text, read_record, verified_weights,
                          write_hub_folder)
from xsep_zoo.model_card import CardFacts, ComparisonRow, render_model_card
from xsep_zoo.pretrained import DATASET_CFGS, record_published
from zoo_table import comparison_lines, load_results  # a sibling script: the zoo table's statistics

ROOT = Path(__file__).resolve().parents[1]
LOG_NAME, CURVES_NAME = 'log.jsonl', 'curves.png'


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run_dir', type=Path, nargs='?', help='a finished run of scripts/train.py')
    p.add_argument('--refresh', type=Path, nargs='+', metavar='HUB_FOLDER',
                   help='rewrite these published folders (card, config, curves) from their records instead')
    p.add_argument('--tag', help='pretrained tag (default: the dataset name, e.g. cifar10)')
    p.add_argument('--hub-root', type=Path, help='where Hub folders go (default: the repository\'s hub_cards/)')
    p.add_argument('--data-source', help='local dataset folder to evaluate on (default: the one the run used; '
                   'with --refresh: measure each folder again on it)')
    p.add_argument('--test-limit', type=int, help='evaluate a subset only (tests; a card should use the full split)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing Hub folder')
    args = p.parse_args(argv)
    if (args.run_dir is None) == (args.refresh is None):
        p.error('give a run folder to export, or --refresh with published Hub folders')
    if args.refresh and (args.test_limit or args.tag or args.overwrite):
        p.error('--refresh keeps each folder\'s tag and measures the whole test split; '
                '--tag, --test-limit and --overwrite are for exporting a run')
    return args


def portable(value):
    """An absolute path inside the folder that holds this checkout, relative to the checkout's root.

    Cards show commands run from the repository root; `/home/me/xsep-zoo/scripts/train.py` and
    `/home/me/data/cifar10` become `scripts/train.py` and `../data/cifar10`.
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
    """The recorded command as a user runs it from the repository root: a local dataset copy is `$DATA`."""
    tokens, kept = shlex.split(command), []
    while tokens:
        token = tokens.pop(0)
        if token in SCHEDULING_OPTIONS:
            tokens.pop(0)  # its value
        elif token == '--data-source':
            tokens.pop(0)
            kept += [token, '$DATA']
        elif token.split('=', 1)[0] not in SCHEDULING_OPTIONS:
            kept.append(portable(token))
    return ' '.join(shlex.quote(t) if t != '$DATA' else t for t in kept)


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


def _hardware(stretches: list) -> str:
    """The processors a run trained on, each once: 'AMD EPYC; NVIDIA H100 80GB HBM3' (a machine is logged as
    'AMD EPYC, 2 threads x 1 process, torch ...' or '1 x NVIDIA H100 80GB HBM3, torch ...')."""
    machines = dict.fromkeys(re.sub(r'^\d+ x ', '', s['machine'].split(', ')[0]) for s in stretches)
    return '; '.join(machines)


def plot_curves(log: list, path: Path, title: str) -> None:
    """Train loss and test top-1 per epoch, with the learning rate: the training curves of a card."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    epochs = [e['epoch'] for e in log]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6), layout='constrained')
    loss_ax.plot(epochs, [e['train_loss'] for e in log], label='train loss')
    loss_ax.plot(epochs, [e['test_loss'] for e in log], label='test loss')
    loss_ax.set(xlabel='epoch', ylabel='cross-entropy', yscale='log')
    acc_ax.plot(epochs, [e['test_top1'] for e in log], color='C2', label='test top-1')
    acc_ax.set(xlabel='epoch', ylabel='test top-1 (%)')
    lr_ax = acc_ax.twinx()
    lr_ax.plot(epochs, [e['lr'] for e in log], color='0.6', linewidth=0.8, label='learning rate')
    lr_ax.set(ylabel='learning rate')
    fig.legend(loc='outside lower center', ncols=4, handles=[*loss_ax.lines, *acc_ax.lines, *lr_ax.lines])
    fig.suptitle(title)
    fig.savefig(path, dpi=100, metadata={'Software': None})
    plt.close(fig)


def _comparison(record: dict, zoo: list) -> list:
    """This model, its DW or XSepConv partner, and the rest of the zoo's published weights on its dataset."""
    name = f"{record['model']}.{record['tag']}"
    partner = MODELS[record['model']].dw_partner
    partners_of = {n for n, m in MODELS.items() if m.dw_partner == record['model']}
    rows = {name: record}
    for other in zoo:
        if other['dataset'] == record['dataset']:
            rows.setdefault(f"{other['model']}.{other['tag']}", other)

    def note(key, r):
        if key == name:
            return 'this model'
        if r['model'] == partner:
            return 'its DW partner'
        return 'its XSepConv counterpart' if r['model'] in partners_of else ''

    return [ComparisonRow(key, r['top1'], r['macs'], r['params'], r['epochs'], note(key, r))
            for key, r in sorted(rows.items(), key=lambda kv: (kv[1]['macs'], kv[0]))]


def _seed_statistics(record: dict, zoo: list) -> list:
    """The zoo table's XSepConv-against-DW lines (mean, sd, Welch's t-test) that concern this model."""
    return [line for line in comparison_lines(zoo) if f"`{record['model']}`" in line]


def render_card(record: dict, hub_root: Path, has_log: bool) -> str:
    """The model card of a Hub folder, from its record and the records of the zoo's other folders."""
    spec = DATASETS[record['dataset']]
    data = record['data']
    log_note = record.get('log_note', '')
    zoo = load_results(hub_root)  # every published record, read once for both comparisons
    return render_model_card(CardFacts(
        repo_id=f"{HUB_ORG}/{record['model']}.{record['tag']}", model=record['model'], tag=record['tag'],
        description=MODELS[record['model']].description, paper=MODELS[record['model']].paper,
        dataset=record['dataset'], dataset_hub_id=spec.hub_id, data_name=data['name'],
        from_hub=data.get('hub_id') == spec.hub_id, test_split=record['split'],
        metrics={k: record[k] for k in ('top1', 'top5', 'loss', 'count')}, params=record['params'],
        macs=record['macs'], input_size=tuple(record['macs_input_size']), recipe=record['recipe'],
        train_command=record['train_command'], epochs=record['epochs'], train_hours=record['train_seconds'] / 3600,
        hardware=_hardware(record['trained_on']), curves=CURVES_NAME if has_log else None, log_note=log_note,
        comparison=_comparison(record, zoo), seed_statistics=_seed_statistics(record, zoo),
        base_model=record.get('base_model'), per_image_ranks=RANKS_KEY in record,
    ))


def _publish_cfg(model, name: str, tag: str, dataset: str, label_names) -> None:
    """Make `model.pretrained_cfg` the cfg of its Hub repo: its tag and id, the dataset's sizes, stats and labels."""
    spec = DATASETS[dataset]
    input_size, test_size = (3, spec.train_size, spec.train_size), (3, spec.image_size, spec.image_size)
    model.pretrained_cfg = {
        **model.pretrained_cfg, 'tag': tag, 'hf_hub_id': f'{HUB_ORG}/{name}.{tag}', 'num_classes': spec.num_classes,
        'input_size': input_size, 'test_input_size': test_size if test_size != input_size else None,
        'mean': spec.mean, 'std': spec.std, 'label_names': tuple(label_names),
        'pool_size': tuple(s // model.total_stride for s in input_size[1:]),
    }


def _write(folder: Path, model, weights, record: dict, log: list, overwrite: bool) -> Path:
    """Write the Hub folder: timm's files, the record, and the log with its curves when there is one."""
    hub_root = folder.parent
    files = {}
    if log:
        files[LOG_NAME] = ''.join(json.dumps(entry) + '\n' for entry in log)
        with tempfile.TemporaryDirectory() as tmp:
            plot_curves(log, Path(tmp) / CURVES_NAME, f"{record['model']}.{record['tag']}")
            files[CURVES_NAME] = (Path(tmp) / CURVES_NAME).read_bytes()
    card = render_card(record, hub_root, has_log=bool(log))
    write_hub_folder(folder, model, weights, card, record, files, overwrite)
    if folder.resolve().parent == (ROOT / 'hub_cards').resolve():  # the zoo's own folders: the registry follows
        record_published(folder)
    return folder


def export_run(args: argparse.Namespace) -> Path:
    record = json.loads((args.run_dir / 'config.json').read_text())
    config = record['config']
    weights = args.run_dir / WEIGHTS_NAME
    if not weights.is_file():
        sys.exit(f'{args.run_dir}: no {WEIGHTS_NAME}; the run has not finished '
                 '(resume it with scripts/train.py --resume)')
    log = [json.loads(line) for line in (args.run_dir / LOG_NAME).read_text().splitlines()]
    dataset, tag = config['dataset'], args.tag or config['dataset']
    if dataset not in DATASET_CFGS:
        sys.exit(f'{dataset}: the registry has no pretrained cfg for this dataset (known: {", ".join(DATASET_CFGS)}); '
                 'add its line to DATASET_CFGS in xsep_zoo/pretrained.py before exporting')
    spec = DATASETS[dataset]
    source = args.data_source or config['data_source']

    model = timm.create_model(config['model'], num_classes=spec.num_classes)
    name = model.pretrained_cfg['architecture']  # an alias (mobilenetv3_small_xsep) publishes as its architecture
    try:
        load_weights_into(model, weights)
    except WeightsError as e:
        sys.exit(str(e))
    not_finite = [k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
    if not_finite:
        sys.exit(f'{weights}: {len(not_finite)} tensors hold NaN or infinite values ({", ".join(not_finite[:3])}'
                 f'{" ..." if len(not_finite) > 3 else ""}): the run diverged; nothing was exported')
    try:
        test = load_test(dataset, source=source, limit=args.test_limit)
    except DataError as e:
        sys.exit(str(e))
    _publish_cfg(model, name, tag, dataset, test.classes)
    metrics = evaluate_model(model, test, spec, per_image=True)
    if not math.isfinite(metrics['loss']):
        sys.exit(f'{weights}: the test loss is {metrics["loss"]:g}: the weights do not compute finite outputs; '
                 'nothing was exported')
    test_size = tuple(model.pretrained_cfg['test_input_size'] or model.pretrained_cfg['input_size'])
    cost = count_cost(model, test_size)
    recipe = {**config, 'model': name, 'data_source': '$DATA' if config['data_source'] else None}
    record = dict(
        model=name, tag=tag, dataset=dataset, split=spec.test_split, data=describe_source(dataset, source),
        **{k: metrics[k] for k in ('top1', 'top5', 'loss', 'count')},
        params=cost.params, macs=cost.macs, macs_input_size=list(test_size), epochs=config['epochs'],
        train_seconds=sum(entry['seconds'] for entry in log), trained_on=_stretches(record, log), recipe=recipe,
        train_command=_portable_command(record['command']),
        base_model=portable(config.get('init_from')) or (name if config.get('pretrained') else None),
        **{RANKS_KEY: ranks_text(metrics['ranks'])},
    )
    folder = (args.hub_root or local_hub_root() or Path('hub_cards')) / f'{name}.{tag}'
    try:
        _write(folder, model, weights, record, log, args.overwrite)
    except FileExistsError as e:
        sys.exit(str(e))
    print(f'{folder}: top-1 {metrics["top1"]:.2f} % on {metrics["count"]} images, '
          f'{cost.params / 1e6:.3f} M params, {cost.macs / 1e6:.2f} M MACs')
    return folder


def remeasured(folder: Path, record: dict, model, weights: Path, source: str) -> dict:
    """`record` with its per-image ranks measured on `source`; exits, changing nothing, unless the card holds."""
    dataset, spec = record['dataset'], DATASETS[record['dataset']]
    try:
        if describe_source(dataset, source) != record['data']:
            sys.exit(f'{folder}: {source} holds other test files than the ones its card was measured on '
                     f'({record["data"]["name"]}); nothing was rewritten')
        load_weights_into(model, weights)
        metrics = evaluate_model(model, load_test(dataset, source=source), spec, per_image=True)
    except (DataError, WeightsError) as e:
        sys.exit(str(e))
    problem = card_mismatch(record, metrics)
    if problem:
        sys.exit(f'{folder}: {problem}; nothing was rewritten')
    return {**record, RANKS_KEY: ranks_text(metrics['ranks'])}


def refresh(folder: Path, source: str | None = None) -> Path:
    """Rewrite a published folder from its record: same weights (the file is kept), same figures, current card."""
    try:
        record = read_record(folder)
        weights = verified_weights(folder / CONFIG_NAME, folder / WEIGHTS_NAME)
    except WeightsError as e:
        sys.exit(str(e))
    log_path = folder / LOG_NAME
    log = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    spec = DATASETS[record['dataset']]
    model = timm.create_model(record['model'], num_classes=spec.num_classes)
    if source is not None:
        record = remeasured(folder, record, model, weights, source)
    _publish_cfg(model, record['model'], record['tag'], record['dataset'], DATASET_CFGS[record['dataset']]['label_names'])
    kept = {k: v for k, v in record.items() if k not in ('weights_sha256', 'exported_config')}
    _write(folder, model, weights, kept, log, overwrite=True)
    measured = f'; measured again: top-1 {record["top1"]:.2f} on {record["count"]} images' if source else ''
    print(f'{folder}: refreshed ({CARD_NAME}, config.json{", " + CURVES_NAME if log else ""}{measured})')
    return folder


def main(argv=None):
    args = parse_args(argv)
    if args.refresh:
        return [refresh(folder, args.data_source) for folder in args.refresh]
    return export_run(args)


if __name__ == '__main__':
    main()

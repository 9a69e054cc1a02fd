"""Load the zoo's pretrained models, evaluate them, and print the result next to their model cards.

    python scripts/reproduce.py                                   # the paper's model and its baseline
    python scripts/reproduce.py mobilenetv3_small_xsep_k7_100.cifar10 --data-source /path/to/cifar10
    python scripts/reproduce.py --all --data-source /path/to/cifar10  # every published model

Each model is created with `timm.create_model(name, pretrained=True)` (the local Hub folder in
hub_cards/, else the Hub) and tested on its dataset's whole test split: the Hub dataset, or the local
copy in the Hub layout given with --data-source. Exits with status 1 when a measurement differs from
its card on the same test data (or, where the card keeps per-image ranks, when any image ranks its
true class otherwise); on other data (the Hub's lossless CIFAR-10 against a card measured on
a JPEG copy) the two are shown side by side, not compared.
"""
import argparse
import sys
from pathlib import Path

import timm

import xsep_zoo  # noqa: F401  registers the models
from xsep_zoo.data import DATASETS, DataError, describe_source, load_test
from xsep_zoo.engine import evaluate_model
from xsep_zoo.hub import WeightsError, card_mismatch, read_record
from xsep_zoo.pretrained import PUBLISHED

DEFAULT_MODELS = ('mobilenetv3_small_xsep', 'mobilenetv3_small_dw_100')


def card_results(model) -> dict:
    """The measured results recorded beside the weights the model was loaded from (xsep_zoo.json)."""
    return read_record(Path(model.pretrained_cfg['file']).parent)


def main(argv=None) -> bool:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('models', nargs='*', help=f'model names, optionally name.tag (default: {", ".join(DEFAULT_MODELS)})')
    p.add_argument('--all', action='store_true', help='every published model, each of its tags')
    p.add_argument('--data-source', help="local copy of the models' dataset in the Hub layout (default: the Hub)")
    args = p.parse_args(argv)
    if args.all and args.models:
        p.error(f'--all evaluates every published model; drop the names ({" ".join(args.models)}) or --all')
    args.models = sorted(PUBLISHED) if args.all else args.models or list(DEFAULT_MODELS)

    rows, all_equal, tests = [], True, {}
    for name in args.models:
        try:
            model = timm.create_model(name, pretrained=True)
            card = card_results(model)
            dataset = card['dataset']
            if dataset not in tests:
                source = args.data_source
                tests[dataset] = (load_test(dataset, source=source), source or DATASETS[dataset].hub_id)
        except (WeightsError, DataError) as e:
            sys.exit(str(e))
        test, where = tests[dataset]
        measured = evaluate_model(model, test, DATASETS[dataset], per_image=True)
        if describe_source(dataset, args.data_source) == card['data']:  # the same test files, or the Hub's
            problem = card_mismatch(card, measured)  # image by image, where the card keeps a per-image record
            if problem:
                print(f'{name}: {problem}', file=sys.stderr)
            all_equal &= problem is None
            verdict = 'NO' if problem else 'yes'
        else:  # e.g. the Hub's lossless CIFAR-10 against a card measured on the JPEG copy
            verdict = f'not comparable: the card was measured on {card["data"]["name"]}'
        rows.append(f'| `{name}` | {dataset} ({where}) | {measured["top1"]:.2f} | {card["top1"]:.2f} '
                    f'| {measured["top5"]:.2f} | {card["top5"]:.2f} | {measured["count"]} | {verdict} |')
    print('| model | test set | top-1 measured | top-1 card | top-5 measured | top-5 card | images | same |')
    print('|---|---|---:|---:|---:|---:|---:|---|')
    print('\n'.join(rows))
    if not all_equal:
        print('a measurement differs from its model card', file=sys.stderr)
    return all_equal


if __name__ == '__main__':
    sys.exit(0 if main() else 1)

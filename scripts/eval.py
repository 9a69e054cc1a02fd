"""Evaluate a model on a dataset's test split: top-1, top-5, loss and image count, printed and as JSON.

    python scripts/eval.py --model mobilenetv3_small_xsep --pretrained           # the zoo's weights
    python scripts/eval.py --checkpoint runs/x                                     # a training run or checkpoint
    python scripts/eval.py --hub-folder hub_cards/mobilenetv3_small_xsep_100.cifar10
    python scripts/eval.py --model mobilenetv3_small_xsep --pretrained --reparameterize  # the inference form
    ... --data-source /path/to/cifar10 --output results.json

Model and dataset default to what the run or Hub folder records. Always fp32, full test split.
"""
import argparse
import json
import shlex
import sys
from pathlib import Path

import timm
from timm.utils import reparameterize_model

import xsep_zoo  # noqa: F401  registers the models
from xsep_zoo.data import DATASETS, DataError, load_test
from xsep_zoo.engine import evaluate_model
from xsep_zoo.hub import CONFIG_NAME, RECORD_NAME, WeightsError, load_weights_into, read_hub_config, read_record


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--pretrained', action='store_true', help="the model's pretrained weights (needs --model)")
    src.add_argument('--checkpoint', type=Path, help='a training run, one of its checkpoints, or a .safetensors file')
    src.add_argument('--hub-folder', type=Path, help='a Hub repo folder (config.json + model.safetensors)')
    p.add_argument('--model', help='registered model name, optionally with a pretrained tag (name.tag)')
    p.add_argument('--dataset', choices=sorted(DATASETS))
    p.add_argument('--data-source', help='local dataset folder in the Hub layout (default: the Hub id)')
    p.add_argument('--limit', type=int, help='evaluate a seeded random subset of this many test images')
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--reparameterize', action='store_true',
                   help='evaluate the inference form: timm.utils.reparameterize_model (BN folded into the convs)')
    p.add_argument('--output', type=Path, help='also write the result as JSON here')
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f'--limit must be at least 1, not {args.limit}')
    return args


def _run_config(checkpoint: Path) -> dict:
    """The training configuration recorded by scripts/train.py in the run folder around `checkpoint`."""
    for folder in (checkpoint, *checkpoint.parents):
        record = folder / 'config.json'
        if record.is_file() and 'config' in (data := json.loads(record.read_text())):
            return data['config']
    return {}


def load_model(args: argparse.Namespace):
    """(model, dataset name, description of the weights)."""
    if args.hub_folder is not None:
        read_hub_config(args.hub_folder / CONFIG_NAME)  # a damaged or missing one named before timm reads it
        meta = read_record(args.hub_folder) if (args.hub_folder / RECORD_NAME).is_file() else {}
        model = timm.create_model(f'local-dir:{args.hub_folder}', pretrained=True)
        return model, args.dataset or meta.get('dataset'), str(args.hub_folder)
    if args.pretrained:
        if not args.model:
            sys.exit('--pretrained needs --model')
        model = timm.create_model(args.model, pretrained=True)
        tag = model.pretrained_cfg.get('tag') or ''  # tags name their dataset: 'cifar10', 'cifar10_e400'
        tag_dataset = next((d for d in DATASETS if tag == d or tag.startswith(d + '_')), None)
        return model, args.dataset or tag_dataset, f'{args.model} pretrained'
    run = _run_config(args.checkpoint)
    name, dataset = args.model or run.get('model'), args.dataset or run.get('dataset')
    if not name or not dataset:
        sys.exit(f'{args.checkpoint}: no training record found; pass --model and --dataset')
    model = timm.create_model(name, num_classes=DATASETS[dataset].num_classes)
    weights, _ = load_weights_into(model, args.checkpoint)
    return model, dataset, str(weights)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        model, dataset, weights = load_model(args)
        if dataset not in DATASETS:
            allowed = ', '.join(sorted(DATASETS))
            sys.exit(f'unknown dataset {dataset!r} for these weights; pass --dataset, one of: {allowed}')
        test = load_test(dataset, source=args.data_source, limit=args.limit)
    except (WeightsError, DataError) as e:
        sys.exit(str(e))
    if args.reparameterize:
        model = reparameterize_model(model.eval())
    metrics = evaluate_model(model, test, DATASETS[dataset], batch_size=args.batch_size)
    result = dict(model=model.pretrained_cfg.get('architecture'), weights=weights, dataset=dataset,
                  split=DATASETS[dataset].test_split, data_source=args.data_source,
                  reparameterized=args.reparameterize, **metrics,
                  command='python ' + shlex.join(sys.argv))
    print(f'{result["model"]} on {dataset} {result["split"]} ({metrics["count"]} images): '
          f'top-1 {metrics["top1"]:.2f} %, top-5 {metrics["top5"]:.2f} %, loss {metrics["loss"]:.4f}')
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + '\n')
    return result


if __name__ == '__main__':
    main()

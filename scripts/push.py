"""Publish Hub folders of hub_cards/ to the Hugging Face Hub, one repo each (created when missing).

    python scripts/push.py hub_cards/mobilenetv3_small_xsep_100.cifar10
    python scripts/push.py --all                # every folder under hub_cards/
    python scripts/push.py --all --dry-run      # what would be pushed, touching nothing

Only the files of a Hub model repo go (HUB_FILES: weights, config.json, card, and the zoo's training
log, curves and provenance record), from the top of the folder. Anything else there (a .env holding a
token, pytorch_model.bin, checkpoints/, dotfiles, subfolders) stays local and is named in one line:
    leaving out of xsep-zoo/<model>.<tag>: .env, checkpoints/ (not part of a Hub model repo)
--dry-run prints the same, with what would be pushed. With --all, a folder holding none of the
weights, config.json and card is not a Hub folder and is skipped with a message; a folder missing
only some of them is refused, as is any named folder that lacks one.

The token is huggingface_hub's usual one (`hf auth login`, or the HF_TOKEN variable); it is never
printed or written. Each folder's weights are checked against the sha256 in its config.json first.
"""
import argparse
import sys
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import get_token

from xsep_zoo.constants import HUB_ORG
from xsep_zoo.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, WeightsError, local_hub_root, verified_weights

REQUIRED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
# The allow-list: the only files pushed, and only from the top of a Hub folder.
HUB_FILES = REQUIRED_FILES + (
    'log.jsonl',  # per-epoch training log
    'curves.png',  # training curves
    'xsep_zoo.json',  # provenance record
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('folders', nargs='*', type=Path, help='Hub folders <model>.<tag> to push')
    p.add_argument('--all', action='store_true', help='push every folder under --hub-root')
    p.add_argument('--hub-root', type=Path, help="default: the repository's hub_cards/")
    p.add_argument('--org', default=HUB_ORG, help=f'Hub organisation or user (default: {HUB_ORG})')
    p.add_argument('--private', action='store_true', help='create missing repos as private')
    p.add_argument('--dry-run', action='store_true', help='check and list, push nothing')
    args = p.parse_args(argv)
    if bool(args.folders) == args.all:
        p.error('give either Hub folders or --all')
    return args


def hub_folders(args: argparse.Namespace) -> list[Path]:
    if not args.all:
        return args.folders
    root = args.hub_root or local_hub_root()
    if root is None or not root.is_dir():
        sys.exit(f'no Hub folder root at {root}; pass --hub-root')
    folders = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.')):
        if any((folder / n).exists() for n in REQUIRED_FILES):
            folders.append(folder)  # a Hub folder, or half of one: check_folder decides
            continue
        print(f'skipping {folder}: not a Hub folder (holds none of {", ".join(REQUIRED_FILES)})')
    return folders


def _entry(path: Path) -> str:
    return f'{path.name}/' if path.is_dir() else path.name


def sort_out(folder: Path) -> tuple[list[str], list[str]]:
    """The names in `folder` to push (allow-listed files at its top) and those left out (folders with a /)."""
    pushed, left_out = [], []
    for path in sorted(folder.iterdir()):
        (pushed if path.name in HUB_FILES and path.is_file() else left_out).append(_entry(path))
    return pushed, left_out


def check_folder(folder: Path) -> None:
    missing = [n for n in REQUIRED_FILES if not (folder / n).is_file()]
    if missing:
        raise WeightsError(f'{folder}: not a Hub folder, missing {", ".join(missing)}')
    verified_weights(folder / CONFIG_NAME, folder / WEIGHTS_NAME)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    folders = hub_folders(args)
    try:
        for folder in folders:
            check_folder(folder)
    except WeightsError as e:
        sys.exit(str(e))
    if not args.dry_run and get_token() is None:
        sys.exit('no Hugging Face token: log in with `hf auth login` or set HF_TOKEN')
    api = HfApi()
    urls = []
    for folder in folders:
        repo_id = f'{args.org}/{folder.name}'
        pushed, left_out = sort_out(folder)
        if left_out:
            print(f'leaving out of {repo_id}: {", ".join(left_out)} (not part of a Hub model repo)')
        if args.dry_run:
            print(f'would push {folder} -> {repo_id}: {", ".join(pushed)}')
            continue
        api.create_repo(repo_id, repo_type='model', private=args.private, exist_ok=True)
        # Exact names (no wildcards) match only those files at the folder's top; everything else stays local.
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, allow_patterns=pushed,
                                   commit_message=f'Upload {folder.name}')
        print(f'pushed {folder} -> {commit.commit_url}')
        urls.append(commit.commit_url)
    return urls


if __name__ == '__main__':
    main()

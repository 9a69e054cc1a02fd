"""Publish Hub folders of hub_cards/ to the Hugging Face Hub, one repo each (created when missing).

    python scripts/push.py hub_cards/mobilenetv3_small_xsep_100.cifar10
    python scripts/push.py --all                # every folder under hub_cards/
    python scripts/push.py --all --dry-run      # what would be pushed, touching nothing

The token is huggingface_hub's usual one (`hf auth login`, or the HF_TOKEN variable); it is never
printed or written. Each folder's weights are checked against the sha256 in its config.json first.
"""
import argparse
import sys
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import get_token

from xsep_zoo.constants import HUB_ORG
from xsep_zoo.hub import (CARD_NAME, CONFIG_NAME, LAST_CHECKPOINT_DIR, WEIGHTS_NAME, WeightsError, is_unfinished_run,
                          local_hub_root, verified_weights)


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
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
    unfinished = [p for p in folders if is_unfinished_run(p)]
    for folder in unfinished:
        print(f'skipping {folder}: it holds only {LAST_CHECKPOINT_DIR}/, a run still training (scripts/run_state.py)')
    return [p for p in folders if p not in unfinished]


def check_folder(folder: Path) -> None:
    missing = [n for n in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME) if not (folder / n).is_file()]
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
        if args.dry_run:
            print(f'would push {folder} -> {repo_id}: {", ".join(sorted(p.name for p in folder.iterdir()))}')
            continue
        api.create_repo(repo_id, repo_type='model', private=args.private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=f'Upload {folder.name}')
        print(f'pushed {folder} -> {commit.commit_url}')
        urls.append(commit.commit_url)
    return urls


if __name__ == '__main__':
    main()

"""Keep the latest checkpoint of an unfinished long run in its Hub folder, so that another session continues it.

A run folder under runs/ does not outlive the session (or the lent GPU machine) that trained it; a
training longer than any one of them must travel with the repository. Like the `last-checkpoint/`
folder that transformers' Trainer pushes to a model repo with hub_strategy="checkpoint", the run's
record and latest checkpoint live in hub_cards/<model>.<tag>/last-checkpoint/ until the run is
finished and exported:

    python scripts/run_state.py restore hub_cards/<model>.<tag>/last-checkpoint runs/<run>   # then train --resume
    python scripts/run_state.py save runs/<run> hub_cards/<model>.<tag>/last-checkpoint      # after it stopped
    python scripts/run_state.py finished runs/<run>      # exit status 0 once it can be exported, 1 before
    python scripts/run_state.py published hub_cards/<model>.<tag>    # exit status 0 once it is exported

Neither step goes backwards: `save` keeps a saved state that is further along than the run and never
writes into a Hub folder that holds the exported model; `restore` refuses to replace a run folder that
is behind the saved state (move it away first).
Neither mixes two runs: both refuse when the settings in the two config.json files differ.
Only the standard library is used, so it runs anywhere the repository does, before any install.
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

# What a run folder needs to be resumed: its command and settings, its log, its latest checkpoint.
RECORD = ('config.json', 'log.jsonl')
POINTER = Path('checkpoints') / 'latest.json'
FINAL_WEIGHTS = 'model.safetensors'  # what train.py writes after the last epoch (xsep_zoo.hub.WEIGHTS_NAME)
HUB_CONFIG = 'config.json'  # what export.py writes into the Hub folder, beside weights and card (xsep_zoo.hub.CONFIG_NAME)


def epochs_done(folder: Path) -> Optional[int]:
    """Epochs completed by the latest checkpoint in a run folder (or a saved state), None if it has none."""
    pointer = folder / POINTER
    return json.loads(pointer.read_text())['epochs_done'] if pointer.is_file() else None


def finished(run_dir: Path) -> tuple[bool, str]:
    """Whether a run has trained all its epochs and written its final weights: what export needs."""
    if not (run_dir / 'config.json').is_file():
        return False, f'{run_dir}: not started'
    epochs, done = json.loads((run_dir / 'config.json').read_text())['config']['epochs'], epochs_done(run_dir) or 0
    if done < epochs:
        return False, f'{run_dir}: epoch {done} of {epochs}'
    if not (run_dir / FINAL_WEIGHTS).is_file():
        return False, f'{run_dir}: epoch {done} of {epochs}, no {FINAL_WEIGHTS} yet (resume it to write them)'
    return True, f'{run_dir}: finished, epoch {done} of {epochs}'


def published(hub_folder: Path) -> tuple[bool, str]:
    """Whether a run is exported: then its saved state is gone and nothing is left to train, not even from scratch."""
    if (hub_folder / HUB_CONFIG).is_file():
        return True, f'{hub_folder}: exported; nothing left to train'
    return False, f'{hub_folder}: not exported'


def check_same_run(a: Path, b: Path) -> None:
    """Refuse to mix two different runs: the settings in their config.json must be equal (where both have one)."""
    settings = [json.loads((f / 'config.json').read_text())['config'] if (f / 'config.json').is_file() else None
                for f in (a, b)]
    if None not in settings and settings[0] != settings[1]:
        changed = sorted(k for k in {**settings[0], **settings[1]} if settings[0].get(k) != settings[1].get(k))
        sys.exit(f'{a} and {b} are different runs (their settings differ in {", ".join(changed)}); '
                 'nothing was copied')


def copy_state(src: Path, dst: Path) -> None:
    """Copy a run's record and latest checkpoint into `dst` (which must not exist)."""
    latest = json.loads((src / POINTER).read_text())['checkpoint']
    dst.mkdir(parents=True)
    for name in RECORD:
        shutil.copy2(src / name, dst / name)
    shutil.copytree(src / 'checkpoints' / latest, dst / 'checkpoints' / latest)
    shutil.copy2(src / POINTER, dst / POINTER)
    for path in (dst, *dst.rglob('*')):  # accelerate writes model.safetensors private
        path.chmod(0o755 if path.is_dir() else 0o644)


def save(run_dir: Path, state_dir: Path) -> str:
    run_epochs, saved_epochs = epochs_done(run_dir), epochs_done(state_dir)
    if run_epochs is None:
        sys.exit(f'{run_dir}: no checkpoint ({POINTER} not found); nothing to save')
    exported, message = published(state_dir.parent)
    if exported:
        sys.exit(f'{message}: {run_dir} was not saved into it')
    check_same_run(run_dir, state_dir)
    if saved_epochs is not None and saved_epochs >= run_epochs:
        return f'{state_dir} already holds epoch {saved_epochs} (the run is at {run_epochs}); kept it'
    # build the new copy beside the old one, then swap: an interruption leaves one complete state
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{state_dir.name}.', dir=state_dir.parent))
    try:
        copy_state(run_dir, tmp / 'state')
        old = tmp / 'old'
        if state_dir.exists():
            state_dir.rename(old)
        try:
            (tmp / 'state').rename(state_dir)
        except OSError:
            if old.exists():
                old.rename(state_dir)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    was = f'epoch {saved_epochs}' if saved_epochs is not None else 'nothing'
    return f'{state_dir}: saved epoch {run_epochs} of {run_dir} (it held {was})'


def restore(state_dir: Path, run_dir: Path) -> str:
    saved_epochs, run_epochs = epochs_done(state_dir), epochs_done(run_dir)
    if saved_epochs is None:
        return f'{state_dir}: no saved state; {run_dir} is left as it is'
    check_same_run(state_dir, run_dir)
    if run_dir.exists():
        if run_epochs is not None and run_epochs >= saved_epochs:
            return f'{run_dir} is at epoch {run_epochs}, the saved state at {saved_epochs}; kept the run folder'
        sys.exit(f'{run_dir} is at epoch {run_epochs or 0}, behind the saved state ({saved_epochs}) in {state_dir}; '
                 'move the run folder away to restore it')
    copy_state(state_dir, run_dir)
    return f'{run_dir}: restored epoch {saved_epochs} from {state_dir}'


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='action', required=True)
    s = sub.add_parser('save', help="copy a run's latest checkpoint into its saved state")
    s.add_argument('run_dir', type=Path)
    s.add_argument('state_dir', type=Path)
    r = sub.add_parser('restore', help='recreate a run folder from its saved state')
    r.add_argument('state_dir', type=Path)
    r.add_argument('run_dir', type=Path)
    f = sub.add_parser('finished', help='exit status 0 when a run has trained all its epochs and written its weights')
    f.add_argument('run_dir', type=Path)
    e = sub.add_parser('published', help="exit status 0 when a run's Hub folder holds its exported model")
    e.add_argument('hub_folder', type=Path)
    args = p.parse_args(argv)
    if args.action in ('finished', 'published'):
        done, message = finished(args.run_dir) if args.action == 'finished' else published(args.hub_folder)
        print(message)
        if not done:
            sys.exit(1)
        return message
    message = save(args.run_dir, args.state_dir) if args.action == 'save' else restore(args.state_dir, args.run_dir)
    print(message)
    return message


if __name__ == '__main__':
    main()

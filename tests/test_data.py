"""The data path: the four schemas on small Hub-layout folders, the real CIFAR-10 copy, and the batch transforms."""
import dataclasses
import io
import re
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from xsep_zoo import constants
from xsep_zoo.data import (
    DATASETS, DataError, DataNotFoundError, DatasetSpec, _rrc_boxes, augment, load_split, load_test, load_train,
    normalize, random_crop_flip, random_resized_crop_flip,
)

@pytest.fixture(autouse=True, scope='module')
def _datasets_cache(tmp_path_factory):
    """Prepared arrow files go to a temporary cache, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, 'HF_DATASETS_CACHE', str(tmp_path_factory.mktemp('hf_datasets_cache')))
        yield


# --- building small datasets in the Hub repos' layouts ---------------------------------------------

def _image(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _png(image: PIL.Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    return {'bytes': buffer.getvalue(), 'path': None}


def _write_parquet(path: Path, columns: dict, features: datasets.Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))


def _write_readme(folder: Path, configs: dict[str, dict[str, str]]) -> None:
    """A dataset card declaring `configs` (config -> split -> path glob), as the Hub repos do."""
    lines = ['---', 'configs:']
    for name, splits in configs.items():
        lines += [f'- config_name: {name}', '  data_files:']
        lines += [line for split, path in splits.items() for line in (f'  - split: {split}', f'    path: {path}')]
    (folder / 'README.md').write_text('\n'.join(lines + ['---', '', '# test dataset', '']))


def _classes(n: int) -> datasets.ClassLabel:
    return datasets.ClassLabel(names=[f'class_{i}' for i in range(n)])


def _simple_split(path: Path, spec: DatasetSpec, seeds: list[int], extra: dict | None = None) -> list[np.ndarray]:
    """Write one parquet file of RGB PNGs with labels seed % num_classes; return the pixel arrays."""
    arrays = [_image(s, spec.image_size) for s in seeds]
    columns = {spec.image_column: [_png(PIL.Image.fromarray(a)) for a in arrays],
               spec.label_column: [s % spec.num_classes for s in seeds]}
    features = {spec.image_column: datasets.Image(), spec.label_column: _classes(spec.num_classes)}
    for name, (values, feature) in (extra or {}).items():
        columns[name], features[name] = values, feature
    _write_parquet(path, columns, datasets.Features(features))
    return arrays


def _files(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob('*')}


def _check_split(loaded, arrays: list[np.ndarray], labels: list[int]) -> None:
    assert loaded.images.dtype == torch.uint8 and loaded.images.is_contiguous()
    assert loaded.labels.dtype == torch.int64
    assert loaded.labels.tolist() == labels
    assert torch.equal(loaded.images, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


def test_cifar10_hub_layout(tmp_path):
    spec = DATASETS['cifar10']
    train = _simple_split(tmp_path / 'plain_text' / 'train-00000-of-00001.parquet', spec, list(range(12)))
    test = _simple_split(tmp_path / 'plain_text' / 'test-00000-of-00001.parquet', spec, list(range(100, 105)))
    _write_readme(tmp_path, {'plain_text': {'train': 'plain_text/train-*', 'test': 'plain_text/test-*'}})
    before = _files(tmp_path)
    loaded = load_train('cifar10', tmp_path)
    _check_split(loaded, train, [s % 10 for s in range(12)])
    assert loaded.classes == tuple(f'class_{i}' for i in range(10))
    _check_split(load_test('cifar10', tmp_path), test, [s % 10 for s in range(100, 105)])
    assert _files(tmp_path) == before  # nothing written into the source folder


def test_cifar100_hub_layout_uses_fine_labels(tmp_path):
    spec = DATASETS['cifar100']
    def coarse(seeds):
        return {'coarse_label': ([s % 20 for s in seeds], _classes(20))}

    test = _simple_split(tmp_path / 'cifar100' / 'test-00000-of-00001.parquet', spec, list(range(150, 157)),
                         extra=coarse(range(150, 157)))
    _simple_split(tmp_path / 'cifar100' / 'train-00000-of-00001.parquet', spec, [1, 2], extra=coarse([1, 2]))
    _write_readme(tmp_path, {'cifar100': {'train': 'cifar100/train-*', 'test': 'cifar100/test-*'}})
    loaded = load_test('cifar100', tmp_path)
    _check_split(loaded, test, [s % 100 for s in range(150, 157)])
    assert len(loaded.classes) == 100


def _svhn_folder(folder: Path, readme: bool) -> tuple[list, list]:
    spec = DATASETS['svhn']
    train = _simple_split(folder / 'cropped_digits' / 'train-00000-of-00001.parquet', spec, [0, 1, 2])
    extra = _simple_split(folder / 'cropped_digits' / 'extra-00000-of-00002.parquet', spec, [10, 11])
    extra += _simple_split(folder / 'cropped_digits' / 'extra-00001-of-00002.parquet', spec, [12, 13, 14])
    _simple_split(folder / 'cropped_digits' / 'test-00000-of-00001.parquet', spec, [20])
    if readme:  # the Hub repo also has 'full_numbers' (other columns): it must not be picked
        _write_parquet(folder / 'full_numbers' / 'train-00000-of-00001.parquet', {'image': [_png(
            PIL.Image.fromarray(_image(0, 40)))], 'digits': ['1']},
            datasets.Features({'image': datasets.Image(), 'digits': datasets.Value('string')}))
        _write_readme(folder, {
            'cropped_digits': {s: f'cropped_digits/{s}-*' for s in ('train', 'test', 'extra')},
            'full_numbers': {'train': 'full_numbers/train-*'}})
    return train, extra


@pytest.mark.parametrize('readme', [True, False], ids=['hub_layout', 'plain_folder'])
def test_svhn_train_is_train_plus_extra(tmp_path, readme):
    train, extra = _svhn_folder(tmp_path, readme)
    loaded = load_train('svhn', tmp_path)
    _check_split(loaded, train + extra, [0, 1, 2, 0, 1, 2, 3, 4])
    assert loaded.classes == tuple(f'class_{i}' for i in range(10))
    assert len(load_test('svhn', tmp_path)) == 1
    # a subset of the concatenation: sorted rows from both splits
    subset = load_train('svhn', tmp_path, limit=5, seed=3)
    all_rows = [a.tobytes() for a in train + extra]
    picked = [all_rows.index(img.permute(1, 2, 0).numpy().tobytes()) for img in subset.images]
    assert len(subset) == 5 and picked == sorted(set(picked))


def _tiny_images() -> tuple[list[dict], list[np.ndarray]]:
    """RGB, grayscale, RGBA and palette PNGs, with the RGB pixels each should decode to."""
    rgb = PIL.Image.fromarray(_image(1, 64))
    gray = PIL.Image.fromarray(_image(2, 64)[..., 0], mode='L')
    rgba = PIL.Image.fromarray(np.dstack([_image(3, 64), _image(4, 64)[..., :1]]), mode='RGBA')
    palette = PIL.Image.fromarray(_image(5, 64)).convert('P')
    images = [rgb, gray, rgba, palette]
    expected = [np.asarray(rgb), np.repeat(np.asarray(gray)[..., None], 3, axis=2),
                np.asarray(rgba)[..., :3], np.asarray(palette.convert('RGB'))]
    return [_png(i) for i in images], expected


@pytest.mark.parametrize('layout', ['data', 'flat'])
def test_tiny_imagenet_layout_valid_split_and_rgb(tmp_path, layout):
    """The Hub repo: data/{train,valid}-00000-of-00001-<hash>.parquet, no configs; 'valid' is the test split."""
    spec = DATASETS['tiny_imagenet']
    images, expected = _tiny_images()
    features = datasets.Features({'image': datasets.Image(), 'label': _classes(200)})
    folder = tmp_path / 'data' if layout == 'data' else tmp_path
    _write_parquet(folder / 'valid-00000-of-00001-70d52db3c749a935.parquet',
                   {'image': images, 'label': [199, 0, 7, 42]}, features)
    _simple_split(folder / 'train-00000-of-00001-1359597a978bc4fa.parquet', spec, [3, 4])
    (tmp_path / 'README.md').write_text('---\npretty_name: Tiny ImageNet\n---\n')
    loaded = load_test('tiny_imagenet', tmp_path)
    assert loaded.images.shape == (4, 3, 64, 64)
    _check_split(loaded, expected, [199, 0, 7, 42])
    assert len(load_train('tiny_imagenet', tmp_path)) == 2


def test_parquet_mapping_source(tmp_path):
    spec = DATASETS['cifar10']
    arrays = _simple_split(tmp_path / 'a.parquet', spec, [5, 6]) + _simple_split(tmp_path / 'b.parquet', spec, [7])
    loaded = load_split('cifar10', 'train', {'train': [tmp_path / 'a.parquet', str(tmp_path / 'b.parquet')]})
    _check_split(loaded, arrays, [5, 6, 7])
    assert len(load_split('cifar10', 'test', {'test': str(tmp_path / '*.parquet')})) == 3


# --- errors -------------------------------------------------------------------------------------

def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar1'.*'cifar10', 'cifar100', 'svhn', 'tiny_imagenet'"):
        load_split('cifar1', 'train')


def test_unknown_split_lists_available(tmp_path):
    _svhn_folder(tmp_path, readme=True)
    with pytest.raises(ValueError, match=r"unknown split 'validation' of svhn .*available: 'train', 'test', 'extra'"):
        load_split('svhn', 'validation', tmp_path)
    with pytest.raises(ValueError, match=r"split 'test' of cifar10 in the data_files mapping; available: 'train'"):
        load_split('cifar10', 'test', {'train': str(tmp_path / 'x.parquet')})


def test_missing_columns_are_listed(tmp_path):
    _simple_split(tmp_path / 'train-00000-of-00001.parquet', DATASETS['svhn'], [1, 2])  # 'image', 'label'
    with pytest.raises(ValueError, match=r"no image column 'img'; columns: 'image', 'label'"):
        load_split('cifar10', 'train', tmp_path)
    _simple_split(tmp_path / 'cifar10.parquet', DATASETS['cifar10'], [1, 2])  # 'img', 'label'
    with pytest.raises(ValueError, match=r"no label column 'fine_label'; columns: 'img', 'label'"):
        load_split('cifar100', 'train', {'train': str(tmp_path / 'cifar10.parquet')})


def test_wrong_image_size_names_the_row(tmp_path):
    images = [_png(PIL.Image.fromarray(_image(i, 32 if i != 2 else 30))) for i in range(4)]
    _write_parquet(tmp_path / 'test-00000-of-00001.parquet', {'img': images, 'label': [0, 1, 2, 3]},
                   datasets.Features({'img': datasets.Image(), 'label': _classes(10)}))
    with pytest.raises(ValueError, match=r"cifar10 split 'test' row 2 is 30x30, expected 32x32"):
        load_test('cifar10', tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'):
        load_test('cifar10', tmp_path / 'nowhere')


def _one_line(error: pytest.ExceptionInfo) -> str:
    """The error is of the class scripts print as a line, and fits on one line; returns its message."""
    assert isinstance(error.value, DataError) and '\n' not in str(error.value)
    return str(error.value)


def test_data_errors_are_one_class(tmp_path):
    """Scripts catch DataError alone; a missing source stays a FileNotFoundError too."""
    for source in (tmp_path / 'nowhere', {'test': tmp_path / 'nowhere.parquet'}):
        with pytest.raises(DataNotFoundError, match='nowhere') as error:
            load_test('cifar10', source)
        assert isinstance(error.value, FileNotFoundError)
        _one_line(error)
    _simple_split(tmp_path / 'train-00000-of-00001.parquet', DATASETS['svhn'], [1, 2])
    with pytest.raises(DataError, match="unknown split 'test'"):
        load_test('svhn', tmp_path)
    with pytest.raises(DataError, match="no image column 'img'"):
        load_split('cifar10', 'train', tmp_path)


def _damage(path: Path, how: str) -> None:
    """Overwrite a file with random bytes, or cut it in half as an interrupted download does."""
    data = path.read_bytes()
    path.write_bytes(np.random.default_rng(0).bytes(len(data)) if how == 'random' else data[:len(data) // 2])


def _unreadable(path: Path, dataset: str) -> str:
    return (rf'^{re.escape(str(path))}: not a readable parquet file \(.+\); this {dataset} file is damaged or '
            'incomplete: download or copy it again$')


@pytest.mark.parametrize('how', ['random', 'truncated'])
def test_corrupt_parquet_names_the_file(tmp_path, how):
    # SVHN in the Hub layout, one shard of 'extra' damaged: every split fails, as all are prepared at once
    _svhn_folder(tmp_path / 'svhn', readme=True)
    shard = tmp_path / 'svhn' / 'cropped_digits' / 'extra-00001-of-00002.parquet'
    _damage(shard, how)
    for load in (load_train, load_test):
        with pytest.raises(DataError, match=_unreadable(shard, 'svhn')) as error:
            load('svhn', tmp_path / 'svhn')
        _one_line(error)
    # Tiny-ImageNet's data/ folder without configs, and a data_files mapping
    spec = DATASETS['tiny_imagenet']
    valid = tmp_path / 'tiny' / 'data' / 'valid-00000-of-00001-70d52db3c749a935.parquet'
    _simple_split(valid, spec, [1, 2, 3])
    _simple_split(tmp_path / 'tiny' / 'data' / 'train-00000-of-00001-1359597a978bc4fa.parquet', spec, [4])
    _damage(valid, how)
    with pytest.raises(DataError, match=_unreadable(valid, 'tiny_imagenet')):
        load_test('tiny_imagenet', tmp_path / 'tiny')
    with pytest.raises(DataError, match=_unreadable(valid, 'cifar10')):
        load_split('cifar10', 'test', {'test': valid})


def test_empty_split_names_the_split(tmp_path):
    spec = DATASETS['cifar100']
    coarse = {'coarse_label': ([], _classes(20))}
    empty = tmp_path / 'cifar100' / 'cifar100' / 'test-00000-of-00001.parquet'
    _simple_split(empty, spec, [], extra=coarse)
    _simple_split(tmp_path / 'cifar100' / 'cifar100' / 'train-00000-of-00001.parquet', spec, [1],
                  extra={'coarse_label': ([1], _classes(20))})
    _write_readme(tmp_path / 'cifar100', {'cifar100': {'train': 'cifar100/train-*', 'test': 'cifar100/test-*'}})
    message = rf"has no images: 0 rows in {re.escape(str(empty))}; download or copy that split again$"
    with pytest.raises(DataError, match="cifar100 split 'test' " + message) as error:
        load_test('cifar100', tmp_path / 'cifar100')
    _one_line(error)
    assert len(load_train('cifar100', tmp_path / 'cifar100')) == 1  # the other split still loads
    with pytest.raises(DataError, match="cifar10 split 'test' " + message):
        load_split('cifar10', 'test', {'test': empty})
    # SVHN without a README: an empty 'extra' fails the training set, not silently shrinks it
    svhn = DATASETS['svhn']
    _simple_split(tmp_path / 'svhn' / 'train-00000-of-00001.parquet', svhn, [0, 1])
    _simple_split(tmp_path / 'svhn' / 'extra-00000-of-00001.parquet', svhn, [])
    with pytest.raises(DataError, match=r"svhn split 'extra' has no images: 0 rows in .*extra-00000-of-00001\.parquet"):
        load_train('svhn', tmp_path / 'svhn')


def test_undecodable_image_names_the_row(tmp_path):
    png = _png(PIL.Image.fromarray(_image(0, 32)))
    images = [png, png, {'bytes': b'not an image', 'path': None}, None, {'bytes': png['bytes'][:100], 'path': None}]
    features = datasets.Features({'img': datasets.Image(), 'label': _classes(10)})
    for row in (2, 3, 4):  # each bad row alone in a split of five rows
        folder = tmp_path / f'row{row}'
        _write_parquet(folder / 'test-00000-of-00001.parquet',
                       {'img': images[:2] + [images[row]] + images[:2], 'label': [0] * 5}, features)
        with pytest.raises(DataError) as error:
            load_test('cifar10', folder)
        assert _one_line(error).startswith(f"cifar10 split 'test' row 2 in {folder}: the image in column 'img' ")
        assert str(error.value).endswith('; the data is damaged: download or copy that split again')
        assert {2: "could not be decoded (12 bytes starting b'not an i': not an image format PIL reads)",
                3: 'is missing (null)',
                4: 'could not be decoded (OSError: image file is truncated'}[row] in str(error.value)
    # the row is counted in its own split: limit=4 (seed 0) keeps rows 0, 1, 3, 4 of train + extra, so the
    # bad image is the 4th decoded row, the 5th of the concatenation and row 1 of 'extra'
    spec = DATASETS['svhn']
    _simple_split(tmp_path / 'svhn' / 'train-00000-of-00001.parquet', spec, [0, 1, 2])
    _write_parquet(tmp_path / 'svhn' / 'extra-00000-of-00001.parquet',
                   {'image': [png, {'bytes': b'<!DOCTYPE html>', 'path': None}], 'label': [0, 1]},
                   datasets.Features({'image': datasets.Image(), 'label': _classes(10)}))
    with pytest.raises(DataError, match=rf"svhn split 'extra' row 1 in {re.escape(str(tmp_path / 'svhn'))}: .*"
                                        r"15 bytes starting b'<!DOCTYP'"):
        load_train('svhn', tmp_path / 'svhn', limit=4)


# --- the real CIFAR-10 copy --------------------------------------------------------------------

def test_real_cifar10(real_cifar10):  # the copy the cards were measured on (conftest.py)
    test = load_test('cifar10', real_cifar10, limit=20_000)  # more than it has: all 10,000 rows, in order
    assert test.images.shape == (10_000, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64 and test.labels.bincount().tolist() == [1000] * 10
    assert test.classes == constants.CIFAR10_LABELS
    reference = datasets.load_dataset(str(real_cifar10), split='test')
    for i in (0, 4321, 9999):
        row = reference[i]
        assert torch.equal(test.images[i], torch.from_numpy(np.array(row['img'])).permute(2, 0, 1))
        assert test.labels[i] == row['label']

    subset = load_test('cifar10', real_cifar10, limit=200, seed=0)
    assert len(subset) == 200 and len(subset.labels.unique()) == 10  # the split is sorted by class
    rows = {img.numpy().tobytes(): i for i, img in enumerate(test.images)}
    picked = [rows[img.numpy().tobytes()] for img in subset.images]
    assert picked == sorted(picked) and len(set(picked)) == 200
    assert torch.equal(subset.labels, test.labels[picked])
    assert torch.equal(load_test('cifar10', real_cifar10, limit=200, seed=0).images, subset.images)
    assert not torch.equal(load_test('cifar10', real_cifar10, limit=200, seed=1).labels, subset.labels)

    train = load_train('cifar10', real_cifar10, limit=2000)
    assert train.images.shape == (2000, 3, 32, 32) and 0 <= train.labels.min() and train.labels.max() <= 9
    x = normalize(train.images, DATASETS['cifar10'])
    # the JPEG copy's std is about 0.002 below the reference values the spec holds
    assert x.mean((0, 2, 3)).abs().max() < 0.03 and (x.std((0, 2, 3)) - 1).abs().max() < 0.03


# --- specs --------------------------------------------------------------------------------------

def test_specs():
    assert set(DATASETS) == {'cifar10', 'cifar100', 'svhn', 'tiny_imagenet'}
    got = {k: (s.hub_id, s.config, s.image_column, s.label_column, s.train_splits, s.test_split, s.num_classes,
               s.image_size, s.train_size, s.augmentation) for k, s in DATASETS.items()}
    assert got == {
        'cifar10': ('uoft-cs/cifar10', 'plain_text', 'img', 'label', ('train',), 'test', 10, 32, 32, 'crop_flip'),
        'cifar100': ('uoft-cs/cifar100', 'cifar100', 'img', 'fine_label', ('train',), 'test', 100, 32, 32,
                     'crop_flip'),
        'svhn': ('ufldl-stanford/svhn', 'cropped_digits', 'image', 'label', ('train', 'extra'), 'test', 10, 32, 32,
                 'none'),
        'tiny_imagenet': ('zh-plus/tiny-imagenet', None, 'image', 'label', ('train',), 'valid', 200, 64, 56,
                          'random_resized_crop_flip'),
    }
    assert {k: (s.mean, s.std) for k, s in DATASETS.items()} == {
        'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        'svhn': ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
        'tiny_imagenet': ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    }
    with pytest.raises(ValueError, match=r"unknown augmentation 'cutout'; allowed: 'crop_flip'"):
        dataclasses.replace(DATASETS['cifar10'], augmentation='cutout')


# --- batch transforms ---------------------------------------------------------------------------

def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coded_batch(n: int) -> torch.Tensor:
    """Channel 0 holds column + 1, channel 1 row + 1 (0 only in the padding), channel 2 noise."""
    ramp = torch.arange(1, 33, dtype=torch.uint8)
    cols, rows = ramp.view(1, 1, 32).expand(n, 32, 32), ramp.view(1, 32, 1).expand(n, 32, 32)
    noise = torch.randint(0, 256, (n, 32, 32), generator=_gen(7), dtype=torch.uint8)
    return torch.stack([cols, rows, noise], 1).contiguous()


def test_crop_flip_is_a_shifted_flipped_copy_of_the_padded_image():
    n = 400
    x = _coded_batch(n)
    out = augment(x, DATASETS['cifar10'], _gen(0))
    assert out.shape == (n, 3, 32, 32) and out.dtype == torch.uint8
    padded = F.pad(x, (4, 4, 4, 4))
    matches, params = torch.zeros(n, dtype=torch.long), torch.zeros(n, 3, dtype=torch.long)
    for top in range(9):
        for left in range(9):
            crop = padded[:, :, top:top + 32, left:left + 32]
            for flip, candidate in ((0, crop), (1, crop.flip(-1))):
                hit = (candidate == out).flatten(1).all(1)
                matches += hit
                params[hit] = torch.tensor([top, left, flip])
    assert matches.tolist() == [1] * n  # every output is exactly one crop of its padded input
    assert set(params[:, 0].tolist()) == set(range(9)) and set(params[:, 1].tolist()) == set(range(9))
    assert 0.4 < params[:, 2].float().mean() < 0.6
    # one image by hand: its crop read off the coded channels, then the noise channel compared
    top, left, flip = params[0].tolist()
    reference = torch.zeros(3, 40, 40, dtype=torch.uint8)
    reference[:, 4:36, 4:36] = x[0]
    reference = reference[:, top:top + 32, left:left + 32]
    assert torch.equal(out[0], reference.flip(-1) if flip else reference)


def test_augment_determinism():
    x = torch.randint(0, 256, (16, 3, 64, 64), generator=_gen(1), dtype=torch.uint8)
    cifar = x[:, :, :32, :32].contiguous()
    for spec, batch in ((DATASETS['cifar10'], cifar), (DATASETS['tiny_imagenet'], x)):
        first = augment(batch, spec, _gen(5))
        torch.manual_seed(123)  # the global RNG plays no part
        assert torch.equal(augment(batch, spec, _gen(5)), first)
        assert not torch.equal(augment(batch, spec, _gen(6)), first)


def test_augment_none_and_bad_input():
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=_gen(1), dtype=torch.uint8)
    assert torch.equal(augment(x, DATASETS['svhn'], _gen(0)), x)
    with pytest.raises(ValueError, match='uint8'):
        augment(x.float(), DATASETS['cifar10'], _gen(0))
    with pytest.raises(ValueError, match=r'tiny_imagenet images are 64x64, got \(32, 32\)'):
        augment(x, DATASETS['tiny_imagenet'], _gen(0))


def _resize(x: torch.Tensor, size: int = 56) -> torch.Tensor:
    return F.interpolate(x.float(), size=(size, size), mode='bilinear', align_corners=False)


# grid_sample's float32 coordinates differ from interpolate's by a few 1e-6 pixel: 1e-2 of 255 levels
ATOL = 1e-2


def _which(out: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """Per image: 0 when out equals plain, 1 when it equals plain flipped; asserts one of the two."""
    same = (out - plain).flatten(1).abs().amax(1) < ATOL
    flipped = (out - plain.flip(-1)).flatten(1).abs().amax(1) < ATOL
    assert (same ^ flipped).all()
    return flipped.long()


def test_random_resized_crop_full_box_is_a_plain_resize():
    x = torch.randint(0, 256, (600, 3, 64, 64), generator=_gen(2), dtype=torch.uint8)
    out = random_resized_crop_flip(x, 56, _gen(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert out.shape == (600, 3, 56, 56) and out.dtype == torch.float32
    assert 0.4 < _which(out, _resize(x)).float().mean() < 0.6


def test_random_resized_crop_fallback_is_the_central_crop():
    x = torch.randint(0, 256, (8, 3, 64, 64), generator=_gen(3), dtype=torch.uint8)
    # an area of twice the image never fits: ratio 1 gives the whole image, ratio 2 a 64 x 32 centre band
    _which(random_resized_crop_flip(x, 56, _gen(0), scale=(2.0, 2.0), ratio=(1.0, 1.0)), _resize(x))
    _which(random_resized_crop_flip(x, 56, _gen(0), scale=(2.0, 2.0), ratio=(2.0, 2.0)), _resize(x[:, :, 16:48]))


def test_random_resized_crop_small_box_is_crop_then_resize():
    x = torch.randint(0, 256, (3, 3, 64, 64), generator=_gen(4), dtype=torch.uint8)
    out = random_resized_crop_flip(x, 56, _gen(9), scale=(0.25, 0.25), ratio=(1.0, 1.0))  # 32x32 boxes
    for i in range(3):
        found = [(t, l) for t in range(33) for l in range(33)
                 for ref in [_resize(x[i:i + 1, :, t:t + 32, l:l + 32])[0]]
                 if torch.allclose(out[i], ref, atol=ATOL) or torch.allclose(out[i], ref.flip(-1), atol=ATOL)]
        assert len(found) == 1
    top, left, h, w = _rrc_boxes(20_000, 64, 64, (0.25, 0.25), (1.0, 1.0), _gen(0))
    assert (h == 32).all() and (w == 32).all()
    assert set(top.tolist()) == set(range(33)) and set(left.tolist()) == set(range(33))


def test_rrc_boxes_match_torchvision():
    from torchvision.transforms import RandomResizedCrop
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    top, left, h, w = _rrc_boxes(20_000, 64, 64, scale, ratio, _gen(0))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 64).all()
    assert (h >= 1).all() and (w >= 1).all()
    torch.manual_seed(0)
    image = torch.zeros(3, 64, 64)
    tv = torch.tensor([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(4000)])
    ours = torch.stack([top, left, h, w], 1)
    for stats in (lambda b: (b[:, 2] * b[:, 3] / 4096.).mean(), lambda b: (b[:, 3] / b[:, 2]).log().mean(),
                  lambda b: (b[:, 0] + b[:, 2] / 2).mean() / 64, lambda b: (b[:, 3] == 64).float().mean()):
        assert abs(stats(ours.double()) - stats(tv.double())) < 0.02
    # the fallback on a 32 x 64 image: its ratio 2 is clamped to 4/3, a centred 32 x 43 box
    for size in ((32, 64), (64, 32)):
        fallback = RandomResizedCrop.get_params(torch.zeros(3, *size), [2.0, 2.0], list(ratio))
        boxes = torch.stack(_rrc_boxes(5, *size, (2.0, 2.0), ratio, _gen(0)), 1)
        assert boxes.tolist() == [list(fallback)] * 5


def test_normalize():
    spec = DATASETS['cifar10']
    x = torch.randint(0, 256, (64, 3, 32, 32), generator=_gen(8), dtype=torch.uint8)
    out = normalize(x, spec)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert normalize(x, spec, channels_last=False).is_contiguous()
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    # on data with the spec's statistics the result has mean 0 and std 1 per channel
    stats = x.double() / 255
    matched = dataclasses.replace(spec, mean=tuple(stats.mean((0, 2, 3)).tolist()),
                                  std=tuple(stats.std((0, 2, 3)).tolist()))
    out = normalize(x, matched).double()
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    floats = x.float()  # float input in [0, 255] is normalized the same and left untouched
    assert torch.equal(normalize(floats, spec), normalize(x, spec)) and torch.equal(floats, x.float())


def test_crop_flip_on_other_sizes():
    x = torch.randint(0, 256, (5, 3, 20, 24), generator=_gen(3), dtype=torch.uint8)
    assert random_crop_flip(x, _gen(0), size=16, padding=2).shape == (5, 3, 16, 16)
    with pytest.raises(ValueError, match='crop size 30'):
        random_crop_flip(x, _gen(0), size=30, padding=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_augment_on_cuda_matches_cpu():
    """A CPU generator drives a CUDA batch: the same seed gives the same augmentation on either device."""
    x = torch.randint(0, 256, (32, 3, 64, 64), generator=_gen(1), dtype=torch.uint8)
    spec = DATASETS['tiny_imagenet']
    torch.testing.assert_close(augment(x.cuda(), spec, _gen(4)).cpu(), augment(x, spec, _gen(4)), atol=1e-3, rtol=0)
    cifar = x[:, :, :32, :32].contiguous()
    cifar_spec = DATASETS['cifar10']
    assert torch.equal(augment(cifar.cuda(), cifar_spec, _gen(4)).cpu(), augment(cifar, cifar_spec, _gen(4)))
    assert normalize(cifar.cuda(), spec).device.type == 'cuda'

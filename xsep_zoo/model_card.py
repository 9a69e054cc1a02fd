"""Model cards for the zoo's Hub repos, written from a Hub folder's record (xsep_zoo.json) only.

The layout follows timm's Hub cards: front matter (what the Hub reads, with a `model-index` of the
measured accuracy), "Model Details", "Model Usage" with runnable snippets, "Model Comparison", then
what timm's cards lack: how the numbers were measured, the recipe and the command that trains the
model from a clean clone, and its training curves.
"""
from dataclasses import dataclass, field
from typing import Optional

from huggingface_hub import EvalResult, ModelCardData

__all__ = ['CardFacts', 'ComparisonRow', 'render_model_card', 'CITATION', 'DATASET_NAMES']

DATASET_NAMES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'svhn': 'SVHN', 'tiny_imagenet': 'Tiny-ImageNet'}

CITATION = """@article{chen2020xsepconv,
  title   = {XSepConv: Extremely Separated Convolution},
  author  = {Chen, Jiarong and Lu, Zongqing and Xue, Jing-Hao and Liao, Qingmin},
  journal = {arXiv preprint arXiv:2002.12046},
  year    = {2020}
}"""


@dataclass(frozen=True)
class ComparisonRow:
    name: str  # '<model>.<tag>'
    top1: float
    macs: int
    params: int
    epochs: int
    note: str = ''  # 'this model', 'DW partner', ...


@dataclass(frozen=True)
class CardFacts:
    repo_id: str  # '<org>/<model>.<tag>'
    model: str  # registered architecture name
    tag: str
    description: str  # one sentence: what this model is
    paper: str  # where the paper reports it
    dataset: str  # key of xsep_zoo.data.DATASETS
    dataset_hub_id: str
    data_name: str  # the copy that was read, e.g. its README's pretty_name
    from_hub: bool  # whether that copy is the Hub dataset itself
    test_split: str
    metrics: dict  # top1, top5, loss, count
    params: int
    macs: int
    input_size: tuple
    recipe: dict  # the training configuration
    train_command: str  # from the repository root; a local dataset copy is $DATA
    epochs: int
    train_hours: float
    hardware: str  # the machines it trained on, in a few words
    curves: Optional[str] = None  # file name of the curves image, when the per-epoch log was kept
    log_note: str = ''  # what of the per-epoch log there is
    per_image_ranks: bool = False  # whether the record keeps the rank of the true class of every test image
    comparison: list = field(default_factory=list)  # ComparisonRow
    seed_statistics: list = field(default_factory=list)  # markdown lines: XSepConv against DW over seeds
    license: str = 'apache-2.0'
    base_model: Optional[str] = None


def render_model_card(f: CardFacts) -> str:
    name = DATASET_NAMES.get(f.dataset, f.dataset)
    m, r = f.metrics, f.recipe
    # model-index names what was measured: a local copy is not the Hub dataset, even when it derives from it
    data_type = f.dataset_hub_id if f.from_hub else f'{f.dataset}-local-copy'
    data = ModelCardData(
        library_name='timm', pipeline_tag='image-classification', license=f.license,
        datasets=[f.dataset_hub_id] if f.from_hub else None,
        tags=['image-classification', 'timm', 'xsepconv', 'mobilenetv3'], model_name=f.repo_id,
        base_model=f.base_model,
        eval_results=[
            EvalResult(task_type='image-classification', dataset_type=data_type, dataset_name=f.data_name,
                       dataset_split=f.test_split, metric_type='accuracy', metric_name=f'top-{k} accuracy',
                       metric_value=round(m[f'top{k}'], 2))
            for k in (1, 5)
        ],
    )
    size = 'x'.join(map(str, f.input_size[1:]))
    origin = f'fine-tuned from `{f.base_model}`' if f.base_model else 'trained from scratch'
    data_line = (f'{name} (`{f.dataset_hub_id}`)' if f.from_hub else
                 f'{f.data_name}: a copy of {name} in the Hub layout, not the lossless `{f.dataset_hub_id}`; '
                 'on that one the accuracy differs slightly')
    name_tag = f'{f.model}.{f.tag}'
    recipe_rows = '\n'.join(f'| {k} | {v} |' for k, v in r.items() if k not in ('data_source',))
    comparison = '\n'.join(
        f'| {"**" if row.note == "this model" else ""}`{row.name}`{"**" if row.note == "this model" else ""} '
        f'| {row.top1:.2f} | {row.macs / 1e6:.2f} | {row.params / 1e6:.3f} | {row.epochs} | {row.note} |'
        for row in f.comparison)
    curves = (f'![training curves]({f.curves})\n\nThe per-epoch log is `log.jsonl` in this repo: train loss, test '
              f'top-1/top-5 and loss, learning rate and seconds of every epoch. {f.log_note}'
              if f.curves else f.log_note)
    data_flag = '' if f.from_hub else ' --data-source $DATA'
    per_image = (f'\n`xsep_zoo.json` keeps, for every test image, where the model ranked its true class (`test_ranks`: 0 '
                 f'for top-1 to 4, 5 beyond the top 5); `python scripts/reproduce.py {name_tag}{data_flag}` compares '
                 'image by image and fails on any difference.\n' if f.per_image_ranks else '')
    seeds = ('\nXSepConv against its DW partner, top-1 mean over seeds (sd) and the difference:\n\n'
             + '\n'.join(f.seed_statistics) + '\n') if f.seed_statistics else ''
    return f"""---
{data.to_yaml()}
---
# Model card for {f.repo_id}

{f.description} An XSepConv ([arXiv:2002.12046](https://arxiv.org/abs/2002.12046)) MobileNetV3-Small of the
xsep-zoo, {origin} on {name}: `{f.model}` in timm's registry after `import xsep_zoo`.

## Model Details
- **Model type:** image classification / feature backbone
- **Model stats:**
  - Params (M): {f.params / 1e6:.3f}
  - MACs (M): {f.macs / 1e6:.2f} (multiply-adds of convs and linear layers, at {size})
  - Image size: {size}
- **Papers:**
  - XSepConv: Extremely Separated Convolution: https://arxiv.org/abs/2002.12046 ({f.paper})
  - Searching for MobileNetV3: https://arxiv.org/abs/1905.02244
- **Dataset:** {data_line}

## Model Usage
### Image Classification
```python
import timm
import torch
from PIL import Image

import xsep_zoo  # registers the XSepConv models in timm

model = timm.create_model('{name_tag}', pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
img = Image.open('image.png').convert('RGB')  # any RGB image; the model was trained on {size} ones
with torch.no_grad():
    probabilities = model(transform(img).unsqueeze(0)).softmax(dim=1)
top5_probabilities, top5_indices = probabilities.topk(5)
labels = model.pretrained_cfg['label_names']
print([(labels[i], round(p.item(), 3)) for p, i in zip(top5_probabilities[0], top5_indices[0])])
```

### Feature Map Extraction
```python
import timm
import torch
import xsep_zoo

model = timm.create_model('{name_tag}', pretrained=True, features_only=True).eval()
with torch.no_grad():
    for feature_map in model(torch.randn(1, 3, 32, 32)):
        print(feature_map.shape)  # one map per stage, strides 1, 2, 4, 8
```

### Image Embeddings
```python
import timm
import torch
import xsep_zoo

model = timm.create_model('{name_tag}', pretrained=True, num_classes=0).eval()  # no classifier
with torch.no_grad():
    embedding = model(torch.randn(1, 3, 32, 32))  # pooled features, before the classifier
    features = model.forward_head(model.forward_features(torch.randn(1, 3, 32, 32)), pre_logits=True)
print(embedding.shape, features.shape)
```
The folder is also a Hugging Face transformers model: after `import xsep_zoo`,
`transformers.pipeline('image-classification', model='{f.repo_id}')` answers with the class names.

## Model Comparison
Published weights of the zoo on {name}, measured the same way (top-1 on the {f.test_split} split; MACs at {size}):

| model | top-1 (%) | MACs (M) | params (M) | epochs | |
|---|---:|---:|---:|---:|---|
{comparison}
{seeds}

## Results
Measured on all {m['count']:,} images of the {f.test_split} split of {f.data_name}, in fp32, the images only
normalized (no resizing or cropping):

| top-1 (%) | top-5 (%) | loss | images |
|---:|---:|---:|---:|
| {m['top1']:.2f} | {m['top5']:.2f} | {m['loss']:.4f} | {m['count']} |

Reproduce from a clean clone of the repository (`make run` sets up its environment):
```bash
python scripts/eval.py --model {name_tag} --pretrained{data_flag}
```
{"" if f.from_hub else f"where `$DATA` is a copy of {f.data_name} in the Hub layout (for the Hub's lossless `{f.dataset_hub_id}`, leave out `--data-source`)."}
{per_image}
## Training
{f.epochs} epochs, {f.train_hours:.2f} h on {f.hardware}, with this command from the repository root:
```bash
{f.train_command}
```

| setting | value |
|---|---|
{recipe_rows}

### Training curves
{curves}

## Citation
```bibtex
{CITATION}
```
"""

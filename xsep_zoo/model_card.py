"""Model cards for the zoo's Hub repos, written from measured facts only.

The front matter carries what the Hub reads (library, license, datasets, tags and a `model-index`
with the measured accuracy, so the Hub shows an evaluation table); the body follows timm's cards
and adds the training recipe and the exact commands that train the model and reproduce its numbers.
"""
from dataclasses import dataclass
from typing import Optional

from huggingface_hub import EvalResult, ModelCardData

__all__ = ['CardFacts', 'render_model_card']

DATASET_NAMES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'svhn': 'SVHN', 'tiny_imagenet': 'Tiny-ImageNet'}

CITATION = """@article{chen2020xsepconv,
  title   = {XSepConv: Extremely Separated Convolution},
  author  = {Chen, Jiarong and Lu, Zongqing and Xue, Jing-Hao and Liao, Qingmin},
  journal = {arXiv preprint arXiv:2002.12046},
  year    = {2020}
}"""


@dataclass(frozen=True)
class CardFacts:
    repo_id: str  # '<org>/<model>.<tag>'
    model: str  # registered architecture name
    description: str  # one line: what this model is
    dataset: str  # key of xsep_zoo.data.DATASETS
    dataset_hub_id: str
    data_description: str  # what was actually read, e.g. the local copy's title
    test_split: str
    metrics: dict  # evaluate(): top1, top5, loss, count
    params: int
    macs: int
    input_size: tuple
    recipe: dict  # the training configuration
    train_command: str
    eval_command: str
    train_seconds: float
    train_machine: str  # where it trained: one machine, or each machine with its epochs and hours
    license: str = 'apache-2.0'
    base_model: Optional[str] = None


def render_model_card(f: CardFacts) -> str:
    name = DATASET_NAMES.get(f.dataset, f.dataset)
    m, r = f.metrics, f.recipe
    data = ModelCardData(
        library_name='timm', pipeline_tag='image-classification', license=f.license, datasets=[f.dataset_hub_id],
        tags=['image-classification', 'timm', 'xsepconv', 'mobilenetv3'], model_name=f.repo_id,
        base_model=f.base_model,
        eval_results=[
            EvalResult(task_type='image-classification', dataset_type=f.dataset_hub_id, dataset_name=name,
                       dataset_split=f.test_split, metric_type='accuracy', metric_name=f'top-{k} accuracy',
                       metric_value=round(m[f'top{k}'], 2))
            for k in (1, 5)
        ],
    )
    size = 'x'.join(map(str, f.input_size[1:]))
    recipe_rows = '\n'.join(f'| {k} | {v} |' for k, v in r.items())
    hours = f.train_seconds / 3600
    origin = f'fine-tuned from `{f.base_model}`' if f.base_model else 'trained from scratch'
    return f"""---
{data.to_yaml()}
---
# Model card for {f.repo_id}

{f.description} An XSepConv ([arXiv:2002.12046](https://arxiv.org/abs/2002.12046)) MobileNetV3-Small model
of the xsep-zoo, {origin} on {name}: `{f.model}` in timm's registry after `import xsep_zoo`.

## Model Details
- **Model type:** image classification / feature backbone
- **Model stats:**
  - Params (M): {f.params / 1e6:.3f}
  - MACs (M): {f.macs / 1e6:.2f} (multiply-adds of convs and linear layers, at {size})
  - Image size: {size}
- **Papers:** XSepConv: Extremely Separated Convolution, https://arxiv.org/abs/2002.12046;
  Searching for MobileNetV3, https://arxiv.org/abs/1905.02244
- **Dataset:** {name} (`{f.dataset_hub_id}`); trained and tested on: {f.data_description}

## Results
Measured on all {m['count']:,} images of the {name} `{f.test_split}` split:

| top-1 (%) | top-5 (%) | loss | images |
|---:|---:|---:|---:|
| {m['top1']:.2f} | {m['top5']:.2f} | {m['loss']:.4f} | {m['count']} |

Reproduce:
```bash
{f.eval_command}
```

## Model Usage
```python
import timm
import torch
import xsep_zoo  # registers the XSepConv models in timm

model = timm.create_model('{f.model}.{f.repo_id.rsplit('.', 1)[-1]}', pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**config)
# logits = model(transform(img).unsqueeze(0))
```

## Training
Trained in {hours:.2f} h on {f.train_machine}, with:
```bash
{f.train_command}
```

| setting | value |
|---|---|
{recipe_rows}

## Citation
```bibtex
{CITATION}
```
"""

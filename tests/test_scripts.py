"""Command-line scripts: what they write into the README is what they compute now."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_model_table_is_current():
    model_table = _load_script('model_table')
    readme = (ROOT / 'README.md').read_text()
    assert model_table.replace_section(readme, model_table.model_table(32)) == readme


def test_replace_section_refuses_a_readme_without_markers():
    model_table = _load_script('model_table')
    with pytest.raises(ValueError, match='expected exactly one'):
        model_table.replace_section('no table here', 'x')
    text = f'a\n{model_table.START}\nold\n{model_table.END}\nb'
    assert model_table.replace_section(text, 'new\n') == f'a\n{model_table.START}\nnew\n{model_table.END}\nb'

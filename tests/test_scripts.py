"""Command-line scripts: what they write into the README is what they compute now."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))  # scripts import their sibling helpers, as when run directly

from readme_section import replace_section  # noqa: E402


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_model_table_is_current():
    model_table = _load_script('model_table')
    readme = (ROOT / 'README.md').read_text()
    assert replace_section(readme, 'model-table', model_table.model_table(32)) == readme


def test_replace_section_refuses_a_readme_without_markers():
    with pytest.raises(ValueError, match='expected exactly one <!-- table:start --> ... <!-- table:end --> section'):
        replace_section('no table here', 'table', 'x')
    with pytest.raises(ValueError, match='expected exactly one'):
        replace_section('<!-- t:start -->\n<!-- t:end -->\n<!-- t:start -->', 't', 'x')
    text = 'a\n<!-- t:start -->\nold\n<!-- t:end -->\nb'
    assert replace_section(text, 't', 'new\n') == 'a\n<!-- t:start -->\nnew\n<!-- t:end -->\nb'


def test_readme_zoo_table_is_current():
    zoo_table = _load_script('zoo_table')
    root = ROOT / 'hub_cards'
    table = zoo_table.zoo_table(zoo_table.load_results(root), 'hub_cards/zoo_top1_vs_macs.png')
    readme = (ROOT / 'README.md').read_text()
    assert replace_section(readme, 'zoo-table', table) == readme

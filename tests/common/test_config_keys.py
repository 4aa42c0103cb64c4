"""Unknown config keys: the message names the key, and the nearest known key or the known ones."""

from __future__ import annotations

from pathlib import Path

from ferseq.common.config import explain

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def problem_of(config: dict, key: str) -> str:
    """The one line of explain()'s message about an unknown key in ``key`` (a section, or (top level))."""
    lines = [line for line in explain(config, SCHEMA).splitlines()
             if line.startswith(f"  {key}: Additional properties")]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_misspelt_key_gets_the_nearest_known_one():
    line = problem_of({"data": {"strcit": True}}, "data")
    assert line == "  data: Additional properties are not allowed ('strcit' was unexpected); did you mean 'strict'?"


def test_a_key_like_none_known_lists_the_sections_keys():
    line = problem_of({"split": {"folds": 5}}, "split")
    assert line.endswith("('folds' was unexpected); the keys known here: file, fractions, k, scheme, unit, "
                         "val_fraction")


def test_several_unknown_keys_at_the_top_level():
    line = problem_of({"fram_model": {}, "spilt": {}}, "(top level)")
    assert line.endswith("did you mean 'frame_model' for 'fram_model', 'split' for 'spilt'?")

"""The documentation: the site builds strictly, the configuration reference is the schema's, the README's cheap
commands run as written, the example configs and report captions say what the config does."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO, SCHEMAS
from ferseq.common import config_reference

README = REPO / "README.md"
DOCS = REPO / "docs"
EXAMPLES = REPO / "workflow" / "examples"
REPORT = REPO / "workflow" / "report"


def env_with_venv() -> dict[str, str]:
    """The environment with this interpreter's folder first on PATH (ferseq, snakemake, mkdocs)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_MKDOCS_2_WARNING"] = "1"  # mkdocs-material 9.7+ prints a notice about its successor
    return env


def test_mkdocs_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, env=env_with_venv(),
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_configuration_page_is_the_schemas():
    schema = config_reference.load()
    assert (DOCS / "configuration.md").read_text() == config_reference.render(schema), (
        "docs/configuration.md is out of date: run python -m ferseq.common.config_reference")


def test_every_schema_key_has_a_description():
    assert config_reference.undescribed(config_reference.load()) == []


def test_a_key_without_a_description_is_found_and_every_key_is_on_the_page():
    schema = copy.deepcopy(config_reference.load())
    del schema["properties"]["windows"]["properties"]["length"]["description"]
    schema["properties"]["data"]["properties"]["import"]["properties"]["format"]["description"] = "  "
    assert config_reference.undescribed(schema) == ["data.import.format", "windows.length"]
    page = (DOCS / "configuration.md").read_text()
    for path, spec in config_reference.keys(config_reference.load()):
        group = "." not in path and "properties" in spec  # a top-level group is a section of its own
        assert (f"## `{path}`" if group else f"| `{path}` |") in page, path


JSON_SCHEMA_WORDS = {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "default", "description",
                     "enum", "items", "minItems", "maxItems", "uniqueItems", "properties", "additionalProperties",
                     "required", "pattern", "minLength"}


def test_schema_keys_use_json_schema_words_only():
    # A comma in a YAML flow mapping ({..., description: a, b}) silently makes "b" a key: this catches it.
    for path, spec in config_reference.keys(config_reference.load()):
        assert set(spec) <= JSON_SCHEMA_WORDS, (path, set(spec) - JSON_SCHEMA_WORDS)


def readme_blocks() -> list[str]:
    """The README's shell blocks marked ``<!-- readme-test: run -->`` (cheap: --help, dry runs)."""
    return re.findall(r"<!-- readme-test: run -->\s*```bash\n(.*?)```", README.read_text(), re.S)


def test_readme_is_short_and_its_cheap_commands_run_as_written(tmp_path):
    text = README.read_text()
    assert len(text.splitlines()) <= 210
    blocks = readme_blocks()
    commands = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert len(blocks) >= 3 and any("--help" in c for c in commands) and any(" -n" in c for c in commands)
    for block in blocks:
        # As written, in the checkout; a dry run writes only Snakemake's own .snakemake/ bookkeeping.
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO, capture_output=True, text=True,
                              env=env_with_venv(), timeout=600)
        assert done.returncode == 0, f"{block}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"


def test_readme_and_docs_point_only_inside_the_repository():
    pages = [README, REPO / "mkdocs.yml", *DOCS.glob("*.md")]
    for page in pages:
        text = page.read_text()
        # the design notes and the CI-only data folder beside a checkout (spelled in parts: this file is searched
        # for them too)
        for outside in ("DESIGN" + ".md", ".." + "/shared"):
            assert outside not in text, (page, outside)
    # Every relative link of the README names a file of the checkout.
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if not re.match(r"[a-z]+:", target):
            assert (REPO / target).exists(), target
    # The README's two commands are the Makefile's.
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make demo" in README.read_text() and "make test" in README.read_text()


def example_header(path: Path) -> str:
    return "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_configs_say_how_they_run(example):
    path = EXAMPLES / example
    config, header = yaml.safe_load(path.read_text()), example_header(path)
    # Any config that imports its table runs twice: the faces jobs are planned from that table.
    if config["data"].get("import"):
        assert "twice" in header, f"{example} imports its table but does not say to run twice"
    assert f"--configfile workflow/examples/{example}" in header
    assert "README" not in header  # the details are in the documentation pages it names
    for page in re.findall(r"docs/([\w-]+\.md)", header):
        assert (DOCS / page).is_file(), page


def validated(config: dict) -> dict:
    """A config with the schema's defaults filled in, as the Snakefile's validate() leaves it."""
    from snakemake.utils import validate

    config = copy.deepcopy(config)
    validate(config, str(SCHEMAS / "config.schema.yaml"))
    return config


def render_caption(name: str, config: dict, fold: int = 0) -> str:
    """A report caption rendered as Snakemake's report renders it (Jinja, then reStructuredText)."""
    from docutils.core import publish_parts
    from jinja2 import Environment, StrictUndefined

    env = Environment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    snakemake = SimpleNamespace(config=config, wildcards=SimpleNamespace(fold=fold))
    text = env.from_string((REPORT / name).read_text()).render(snakemake=snakemake)
    publish_parts(text, writer="html", settings_overrides={"halt_level": 2})  # warnings are errors
    return " ".join(text.split())


MINIMAL = {"data": {"videos": "v", "annotations": "a.csv"}, "classes": {"names": ["neutral", "happy", "sad"]}}


def test_report_captions_render_from_the_config():
    demo = validated(yaml.safe_load((REPO / "config.yaml").read_text()))
    for caption in sorted(REPORT.glob("*.rst")):
        render_caption(caption.name, demo)
    text = render_caption("workflow.rst", demo)
    assert "legacy_xception" in text and "trained from scratch" in text and "windows of 16 frames" in text
    assert "lstm, lstm2, bilstm" in text and "by ``segment``" in text and "95.0% intervals" in text

    other = validated({**MINIMAL, "frame_model": {"backbone": "resnet18"}, "windows": {"length": 8, "sampling": "uniform"},
                       "sequence_model": {"architectures": ["gru", "transformer"], "hidden": [64]},
                       "evaluation": {"confidence": 0.9}})
    text = render_caption("workflow.rst", other)
    assert "resnet18" in text and "from ImageNet weights" in text and "windows of 8 frames (uniform" in text
    assert "gru, transformer" in text and "Xception" not in text and "LSTM" not in text
    assert "90.0% intervals" in text and "resamples of the test subjects" in text
    windows = render_caption("window_counts.rst", other)
    assert "Uniform sampling" in windows and "overlap" not in windows
    assert "90.0%" in render_caption("summary.rst", other) and "90.0%" in render_caption("differences.rst", other)

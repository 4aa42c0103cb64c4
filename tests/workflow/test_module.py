"""ferseq used as a Snakemake module (docs/module.md): outputs under the module's prefix, the schema found
through the workflow's source, and a clear stop when the ferseq package is missing or of another version."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import ferseq
from conftest import REPO, SMALL, write_config

WORKFLOW = REPO / "workflow" / "Snakefile"


def workflow_version() -> str:
    return re.search(r'^FERSEQ_VERSION = "([^"]+)"', WORKFLOW.read_text(), re.M).group(1)


def test_the_workflow_package_and_pyproject_are_one_version():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert workflow_version() == pyproject == ferseq.__version__


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    environment = dict(os.environ if env is None else env)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "snakemake", "--directory", str(workdir), *args],
                          capture_output=True, text=True, env=environment, timeout=timeout)


def module_snakefile(workdir: Path, prefix: str) -> Path:
    """The Snakefile a user (or snakedeploy) writes to use ferseq as a module."""
    path = workdir / "Snakefile"
    path.write_text(
        'configfile: "config.yaml"\n\n\n'
        "module ferseq:\n"
        f'    snakefile:\n        "{WORKFLOW}"\n'
        "    config:\n        config\n"
        f'    prefix:\n        "{prefix}"\n\n\n'
        "use rule * from ferseq\n")
    return path


@pytest.mark.workflow
def test_the_demo_runs_as_a_module_with_its_outputs_under_the_prefix(tmp_path):
    settings = {**SMALL, "sequence_model": {**SMALL["sequence_model"], "architectures": ["lstm"]}}
    config = write_config(tmp_path / "config.yaml", **settings)
    # the annotation table as a path relative to the user's folder: the prefix is not put before it
    (tmp_path / "annotations.csv").write_bytes(Path(yaml.safe_load(config.read_text())["data"]["annotations"])
                                               .read_bytes())
    data = yaml.safe_load(config.read_text())
    data["data"]["annotations"] = "annotations.csv"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    snakefile = module_snakefile(tmp_path, "emotion")

    done = snakemake(tmp_path, "--snakefile", str(snakefile), "--cores", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = tmp_path / "emotion" / "results" / "evaluation" / "summary.md"
    assert "CNN-LSTM" in summary.read_text()
    # every output, log and working file under the prefix; nothing in the user's own results/ but the
    # MLflow store the config names
    assert (tmp_path / "emotion" / "results" / "faces" / "qc.csv").is_file()
    assert list((tmp_path / "emotion" / "results" / "folds" / "0" / "frame_model").glob("model.pt"))
    assert not (tmp_path / "results" / "folds").exists() and not (tmp_path / "results" / "faces").exists()
    assert not (tmp_path / "emotion" / "annotations.csv").exists()

    again = snakemake(tmp_path, "--snakefile", str(snakefile), "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]


@pytest.mark.parametrize("package, says", [
    ('raise ImportError("No module named ferseq")\n', "the ferseq package {v} is not installed"),
    ('__version__ = "0.0.1"\n', "the installed ferseq package is 0.0.1"),
])
def test_parsing_stops_naming_the_install_command_without_the_right_package(tmp_path, package, says):
    # a ferseq that shadows the installed one: missing (its import fails) or of another version
    (tmp_path / "fake" / "ferseq").mkdir(parents=True)
    (tmp_path / "fake" / "ferseq" / "__init__.py").write_text(package)
    config = write_config(tmp_path / "config.yaml", **SMALL)
    snakefile = module_snakefile(tmp_path, "emotion")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake")}
    done = snakemake(tmp_path, "--snakefile", str(snakefile), "-n", env=env, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert says.format(v=workflow_version()) in output, output[-2000:]
    assert "pip install -e <your ferseq checkout>" in output
    assert not (tmp_path / "emotion").exists()
    assert config.is_file()

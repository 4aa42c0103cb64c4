"""Shared paths and helpers for the tests: the real demo clips and fixtures."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
# ../shared/data beside the checkout holds the fixture clips (a face that leaves, no face, several faces).
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = SHARED_DATA / "fixtures"
SCHEMAS = REPO / "workflow" / "schemas"
CLASSES = {"names": ["neutral", "happy", "sad", "pensive"], "map": {}}


@pytest.fixture
def demo_annotations():
    return DEMO / "annotations.csv"


@contextmanager
def ferseq_log() -> Iterator[list[str]]:
    """The messages the ``ferseq`` loggers emit while the block runs (whatever handlers an earlier logs.setup left)."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("ferseq")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the real Snakemake CLI on the repository's Snakefile in ``workdir``."""
    env = dict(os.environ)
    # Rules run scripts with the interpreter on PATH: make it this one.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def write_config(path: Path, **overrides) -> Path:
    """A config for a test run: the demo config with absolute data paths and ``overrides`` merged in."""
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["data"]["videos"] = str(DEMO / "videos")
    config["data"]["annotations"] = str(DEMO / "annotations.csv")
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            config.setdefault(section, {})[name] = value
        else:
            config[section] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# Small settings: the whole DAG, raw videos to summary, in about a minute on 2 cores.
SMALL = {
    "frame_model": {"backbone": "legacy_xception", "pretrained": False, "input_size": 64, "epochs": 2, "patience": 2,
                    "frame_stride": 3, "batch_size": 16, "lr": 0.001, "num_workers": 1},
    "sequence_model": {"architectures": ["lstm", "bilstm"], "lr": [0.01], "hidden": [16], "dropout": [0.5],
                       "epochs": 30, "patience": 5},
}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback with a database backend (tests/mlflow_server.py), shared by the tests
    that log to one; a test that kills it starts it again before it ends."""
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The working directory of one real run of the whole demo DAG (SMALL settings), shared by the tests that
    read a finished run; they must not change it (copy it first)."""
    workdir = tmp_path_factory.mktemp("demo_run")
    config = write_config(workdir / "config.yaml", **SMALL)
    done = run_snakemake(workdir, "--configfile", str(config), "--cores", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir


@pytest.fixture(scope="session", autouse=True)
def mlflow_journals(tmp_path_factory) -> Path:
    """The MLflow journals of in-process steps (no rule log to sit beside) in this session's own folder, not in
    the shared temp folder where another test session's journals of the same run names would be picked up."""
    folder = tmp_path_factory.mktemp("mlflow_journals")
    os.environ["FERSEQ_MLFLOW_JOURNALS"] = str(folder)
    yield folder
    os.environ.pop("FERSEQ_MLFLOW_JOURNALS", None)

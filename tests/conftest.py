"""Shared paths and helpers for the tests: the real demo clips and fixtures."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
# The fixture clips and stills (a face that leaves, no face, several faces, one face): provenance in SOURCE.md.
FIXTURES = REPO / "tests" / "fixtures"
# OpenCV's ResNet-10 SSD face detector is not in the repository: its folder comes from this variable.
SSD_MODELS_VAR = "FERSEQ_SSD_MODELS"
SSD_FILES = ("res10_300x300_ssd_iter_140000.caffemodel", "deploy.prototxt")
SCHEMAS = REPO / "workflow" / "schemas"
CLASSES = {"names": ["neutral", "happy", "sad", "pensive"], "map": {}}


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``), where a missing optional input fails rather than skips."""
    return os.environ.get("CI", "").lower() in ("true", "1")


@pytest.fixture(scope="session")
def ssd_models() -> Path:
    """The folder of OpenCV's ResNet-10 SSD files (``$FERSEQ_SSD_MODELS``). Unset: the test is skipped with
    where to get them (it fails in CI); set to a folder without them: it fails, naming what is missing."""
    folder = os.environ.get(SSD_MODELS_VAR, "")
    where = (f"OpenCV's ResNet-10 SSD face detector ({' and '.join(SSD_FILES)}, from OpenCV's "
             f"samples/dnn/face_detector: its download script fetches the weights from the opencv_3rdparty "
             f"repository); put both in one folder and set {SSD_MODELS_VAR} to it")
    if not folder:
        message = f"{SSD_MODELS_VAR} is not set: these tests need {where}"
        if in_ci():
            pytest.fail(message + " (CI=true: not skipped)")
        pytest.skip(message)
    path = Path(folder).resolve()
    missing = [name for name in SSD_FILES if not (path / name).is_file()]
    if missing:
        pytest.fail(f"{SSD_MODELS_VAR}={folder}: {', '.join(missing)} not found in {path}; these tests need {where}")
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The random order's seed again at the end of a run (pytest-randomly prints it only in the header)."""
    if config.pluginmanager.hasplugin("randomly") and config.getoption("randomly_reorganize", False):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(f"tests in random order, seed {seed}: repeat this order with "
                                    f"`make test SEED={seed}` (pytest -p randomly --randomly-seed={seed})")


@pytest.fixture(autouse=True)
def _ferseq_logger() -> Iterator[None]:
    """The ``ferseq`` logger as it was before each test: ``logs.setup`` (``cli.main``, a step run in-process)
    replaces its handlers and stops propagation, which would hide later tests' records from ``caplog`` and
    send later in-process MLflow journals beside an earlier test's log file."""
    logger = logging.getLogger("ferseq")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    for handler in logger.handlers:
        if handler not in handlers:
            handler.close()
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture(autouse=True)
def _torch_seed(request) -> None:
    """Each test starts torch's global generator from its own seed, whatever ran before it: pytest-randomly
    reseeds ``random`` and numpy per test but not torch (the seed follows its ``--randomly-seed``)."""
    torch = sys.modules.get("torch")  # only once something has imported it: no torch import for the others
    if torch is None:
        return
    base = request.config.getoption("randomly_seed", 0) if request.config.pluginmanager.hasplugin("randomly") else 0
    torch.manual_seed((int(base) + zlib.crc32(request.node.nodeid.encode())) % 2**63)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` while the block runs (on 2 shared cores, torch's spinning threads beside
    another busy process slow a small step many-fold)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test."""
    with torch_threads(1):
        yield


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

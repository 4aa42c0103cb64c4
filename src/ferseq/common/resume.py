"""Training state kept between attempts of a job, so that a killed, preempted or timed-out job continues.

A training job saves its whole state at the end of each epoch (and when it is
asked to stop) into a folder that Snakemake never deletes, e.g.
``results/folds/0/frame_model/.resume/``: ``state.pt`` (weights, optimiser,
random states, epoch, early-stopping counters, history, the MLflow journal)
and files it names (``best-3.pt``: the best epoch's weights, written once).
Every write is atomic (a temporary name, fsynced, then renamed), so a kill at
any moment leaves the previous complete state. A new attempt with the same
inputs and parameters (the :func:`fingerprint` saved with the state) continues
from there; with other inputs or parameters it starts afresh and says so. The
folder is removed when the job succeeds.

The files are data: tensors and plain values, read with
``torch.load(weights_only=True)``; random states are tensors and tuples of ints.

SIGTERM (what SLURM sends at a time limit or on preemption, and what its
``--signal`` option can send minutes before) and SIGUSR1 ask a job to stop at
the next batch or epoch boundary (:class:`StopSignal`): it saves its state,
ends its MLflow run KILLED and exits with :class:`Stopped`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ferseq.common.errors import FerseqError
from ferseq.common.outputs import atomic_path

log = logging.getLogger(__name__)

VERSION = 1  # bump when a saved state of the same inputs no longer continues the same training
STATE = "state.pt"


class Stopped(FerseqError):
    """The job was asked to stop (SIGTERM, SIGUSR1) and saved its state; a new attempt continues from it."""


def stamp(path: str | Path) -> list:
    """A file as it is now (path, size, modification time): a cheap identity for large inputs."""
    stat = Path(path).stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def fingerprint(*parts: Any) -> str:
    """A hash of everything that shapes a training run (inputs, settings): a saved state with another one is
    not continued."""
    return hashlib.sha256(json.dumps([VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:20]


def rng_state() -> dict[str, Any]:
    """The random states of torch (CPU and CUDA), numpy and Python, as tensors and tuples of ints."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
            "python": (version, tuple(internal), gauss)}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class StopSignal:
    """While active, SIGTERM and SIGUSR1 set :attr:`received` instead of ending the process; calling it says
    whether one came. The training loops check it after each batch or epoch, save and stop.

    Worker processes forked meanwhile (DataLoader workers) inherit the handler, so the signal a scheduler
    sends to every process of the job does not kill them under the main loop.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, number: int, frame: Any) -> None:
        if self.received is None:
            log.warning("%s received: saving the training state at the next batch or epoch end, then stopping",
                        signal.Signals(number).name)
        self.received = signal.Signals(number).name

    def __enter__(self) -> StopSignal:
        for number in self.SIGNALS:
            try:
                self._previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread: signals go to the main thread's handlers anyway
                break
        return self

    def __exit__(self, *exc: Any) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)

    def __call__(self) -> bool:
        return self.received is not None


class Store:
    """The saved state of one job (see the module docstring): :meth:`load`, :meth:`save`, :meth:`clear`."""

    def __init__(self, folder: str | Path, key: str, what: str):
        self.folder, self.key, self.what = Path(folder), key, what

    def load(self) -> dict[str, Any] | None:
        """The saved state when it is of the same inputs and parameters, else None (and the folder is emptied)."""
        path = self.folder / STATE
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a state that cannot be read is one to start afresh from
            log.warning("%s: the saved state %s cannot be read (%s: %s); starting afresh", self.what, path,
                        type(err).__name__, str(err)[:200])
            self.clear()
            return None
        if state.get("key") != self.key:
            log.info("%s: a saved state is in %s, but of other inputs or parameters: starting afresh", self.what,
                     self.folder)
            self.clear()
            return None
        return state

    def load_file(self, name: str) -> Any:
        """One of the files a state names (e.g. the best weights)."""
        return torch.load(self.folder / f"{name}.pt", map_location="cpu", weights_only=True)

    def save(self, state: dict[str, Any], files: dict[str, Any] | None = None) -> None:
        """Write ``files`` (name -> data, each written once: a name's content never changes), then the state,
        which names them; then remove the files it no longer names."""
        self.folder.mkdir(parents=True, exist_ok=True)
        names = sorted(set(state.get("files", [])) | set(files or {}))
        for name, data in (files or {}).items():
            if not (self.folder / f"{name}.pt").is_file():
                _save(data, self.folder / f"{name}.pt")
        _save({**state, "key": self.key, "files": names}, self.folder / STATE)
        keep = {f"{name}.pt" for name in names} | {STATE}
        for path in self.folder.glob("*.pt"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _save(data: Any, path: Path) -> None:
    """torch.save, atomic and on disk (fsynced) before the rename: a node that fails keeps the previous file."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(data, handle)
            handle.flush()
            os.fsync(handle.fileno())


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict (taken now, whatever the model does next)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def stamps(paths: Iterable[str | Path]) -> list:
    """:func:`stamp` of each of ``paths``, in order."""
    return [stamp(p) for p in paths]

"""MLflow runs that outlive their tracking server: each run is logged to a local journal first, then sent.

A training job must neither fail nor hang because its tracking server went
away (a restart during the night, a network cut). So a :class:`RunLog` writes
every call (create the run, params, per-epoch metrics, artifacts, end) as one
line of a JSON-lines journal in the job's log folder, and a thread of the job
sends what is pending: the training loop never waits for the network. When
the server does not answer, the journal keeps growing, sending is tried again
after a backoff (2 s, doubling, at most every 60 s, each try a 3 s health
check, never MLflow's own minutes of retries), and everything pending is sent,
in order, as soon as the server answers. At the
end of the run the job waits at most ``FERSEQ_MLFLOW_WAIT`` seconds (default
60) for the server; what is still pending is then named in the log and stays
in the journal, and ``ferseq mlflow sync`` sends it later (:func:`sync`).

Files, beside the step's log (``results/logs/folds/0/frame_model.log`` ->
``results/logs/folds/0/frame_model.mlflow/``): ``{run}-{id}.jsonl`` (the
calls) and ``{run}-{id}.state.json`` (the run's id once it exists, and how many
calls were sent). A journal whose run has finished and was sent in full is
removed; one whose run was interrupted (killed, failed) stays, so that the next
attempt of the step goes on with the same run (resume) or, starting afresh,
sends what is left and removes it. A run that does not exist yet (the server
was away when the job started) is referred to by its journal; children name
their parent that way and are sent after it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ferseq.common import mlflow_runs
from ferseq.common.outputs import atomic_path

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
STATE_SUFFIX = ".state.json"
FIRST_BACKOFF = 2.0  # seconds before the first retry; doubles on each failure
MAX_BACKOFF = 60.0
PROBE_TIMEOUT = 3.0  # the health check of an http(s) server before anything is sent
# How long `ferseq mlflow sync` waits for a journal that another process (its job's sender thread, another
# sync) is sending at that moment, before it reports it as such: one try holds it for a few seconds.
LOCK_WAIT = 30.0
# MLflow's own HTTP retries (7, backoff factor 2) hung a job for 8.5 minutes: one try per call here,
# the journal and the backoff above do the retrying. A user's own setting wins.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def close_wait() -> float:
    """Seconds a run's end waits for an unreachable server before leaving its calls in the journal."""
    return float(os.environ.get("FERSEQ_MLFLOW_WAIT", 60))


class Unreachable(Exception):
    """The tracking store did not answer (connection refused, timeout, a 5xx answer)."""


def _refused(err: BaseException) -> bool:
    """Whether the store answered that a call is wrong (a 4xx answer): sending it again would not help.
    Anything else (connection refused, timeout, a 5xx answer, a database that cannot be opened) means the
    store is away: the call is tried again later."""
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.get_http_status_code() < 500


def absolute_uri(uri: str) -> str:
    """A tracking URI that means the same from any working directory (a relative sqlite path made absolute)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def default_folder() -> Path:
    """Where a step's journals go: beside the file the ``ferseq`` logger writes (the rule's log), else
    ``$FERSEQ_MLFLOW_JOURNALS``, else a temp folder."""
    for handler in logging.getLogger("ferseq").handlers:
        if isinstance(handler, logging.FileHandler):
            path = Path(handler.baseFilename)
            return path.with_name(path.stem + ".mlflow")
    if os.environ.get("FERSEQ_MLFLOW_JOURNALS"):
        return Path(os.environ["FERSEQ_MLFLOW_JOURNALS"])
    return Path(tempfile.gettempdir()) / f"ferseq-mlflow-{os.getuid()}"


@dataclass
class _Server:
    """When a tracking URI may be tried again, per process: one backoff for all journals of a server."""

    retry_at: float = 0.0
    backoff: float = FIRST_BACKOFF
    down_since: float | None = None
    give_up_at: float | None = None  # the end of runs waits for the server until then, for all runs together
    answered: bool = False  # once it has answered, calls go straight to MLflow (a failed one starts the backoff)


_servers: dict[str, _Server] = {}


def _server(uri: str) -> _Server:
    return _servers.setdefault(uri, _Server())


def _probe(uri: str) -> None:
    """Raise :class:`Unreachable` unless an http(s) tracking server answers its health check within seconds."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT).close()
    except urllib.error.HTTPError:
        return  # it answered (a proxy in front may not know /health)
    except (OSError, ValueError) as err:
        raise Unreachable(str(getattr(err, "reason", err))) from None


class Journal:
    """One run's calls, one JSON object per line, and how far they were sent (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.state_path = self.path.with_name(self.path.name[:-len(SUFFIX)] + STATE_SUFFIX)

    @staticmethod
    def prefix(name: str) -> str:
        """The start of the file names of a run name's journals."""
        return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name) + "-"

    @classmethod
    def new(cls, folder: str | Path, name: str) -> Journal:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder / f"{cls.prefix(name)}{uuid.uuid4().hex[:8]}{SUFFIX}")

    def append(self, op: dict[str, Any]) -> None:
        """Add one call (a single write of one line: a kill leaves at most a torn last line, skipped on reading)."""
        line = json.dumps(op, default=str) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)

    def ops(self) -> list[dict[str, Any]]:
        """The calls, in order (a torn last line left by a kill is not one)."""
        if not self.path.is_file():
            return []
        ops = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                ops.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return ops

    def state(self) -> dict[str, Any]:
        if self.state_path.is_file():
            return json.loads(self.state_path.read_text())
        return {"run_id": None, "sent": 0}

    def _write_state(self, state: dict[str, Any]) -> None:
        with atomic_path(self.state_path) as tmp:
            tmp.write_text(json.dumps(state) + "\n")

    @property
    def run_id(self) -> str | None:
        return self.state().get("run_id")

    def pending(self) -> list[dict[str, Any]]:
        return self.ops()[self.state()["sent"]:]

    def last_step(self, key: str) -> int:
        """The highest step logged for metric ``key`` (0 if none): where a resumed run goes on logging."""
        return max((m[3] for op in self.ops() if op["op"] == "metrics" for m in op["metrics"] if m[0] == key),
                   default=0)

    def end_status(self) -> str | None:
        """The status the run was ended with (FINISHED, FAILED, KILLED), or None while it is open."""
        return next((op["status"] for op in reversed(self.ops()) if op["op"] == "end"), None)

    def mark_referenced(self) -> None:
        """Keep the state file (the run's id) when the journal goes: another run names this one by its journal."""
        self.path.with_name(self.path.name + ".ref").touch()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path.with_name(self.path.name + ".lock").unlink(missing_ok=True)
        marker = self.path.with_name(self.path.name + ".ref")
        if marker.is_file():
            marker.unlink()
        else:
            self.state_path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()  # the step's folder, once its last journal is gone
        except OSError:
            pass

    @contextmanager
    def _locked(self, wait: float = 0.0) -> Iterator[bool | None]:
        """Whether this process may send now: not while another (``ferseq mlflow sync``, the job's sender
        thread) is sending; that one is waited for up to ``wait`` seconds. None when the journal is gone
        (sent and removed by another): its folder is not made again for a lock file."""
        if not self.path.is_file():
            yield None
            return
        try:
            lock = open(self.path.with_name(self.path.name + ".lock"), "w")
        except FileNotFoundError:  # the folder went with the journal's removal just now
            yield None
            return
        deadline = time.monotonic() + wait
        with lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.1)
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def send(self, probe: bool = True, lock_wait: float = 0.0) -> bool | None:
        """Send the pending calls, in order: True when they were sent, None when there were none (the store was
        not asked), False when another process is sending them (waited for up to ``lock_wait`` seconds).
        Raises :class:`Unreachable`.

        ``probe``: check an http(s) server's health first (a few seconds at most), rather than wait for
        MLflow's own timeouts."""
        with self._locked(lock_wait) as mine:
            if mine is None:
                return None
            if not mine:
                return False
            ops, state = self.ops(), self.state()
            if state["sent"] >= len(ops):
                return None
            if probe:
                _probe(ops[0]["tracking_uri"])
            try:
                _deliver(ops, state, self._write_state)
            except Unreachable:
                raise
            except Exception as err:  # noqa: BLE001 - tracking must never stop training: it is sent later
                raise Unreachable(f"{type(err).__name__}: {str(err)[:300]}") from None
            return True


def resolve(ref: dict[str, str] | None) -> str | None:
    """The run id a reference names: ``{"run_id": id}``, or ``{"journal": path}`` (sent first if need be)."""
    if ref is None:
        return None
    if "run_id" in ref:
        return ref["run_id"]
    journal = Journal(ref["journal"])
    if journal.run_id is None and journal.path.is_file():
        journal.send()
    if journal.run_id is None:
        raise Unreachable(f"the run of {journal.path} does not exist yet")
    return journal.run_id


def _deliver(ops: list[dict[str, Any]], state: dict[str, Any], save_state) -> None:
    """Send ``ops[state['sent']:]`` through MlflowClient, saving progress after each call."""
    import mlflow

    header = ops[0]
    mlflow.set_tracking_uri(header["tracking_uri"])
    client = mlflow.MlflowClient(header["tracking_uri"])
    index, run_id = state["sent"], state["run_id"]
    while index < len(ops):
        try:
            run_id, end = _deliver_one(client, ops, index, run_id)
        except Exception as err:
            if not _refused(err):
                raise
            # the store says the call is wrong (a value it does not accept): it never will accept it
            log.error("MLflow refused %s of run %s (%s): %s; skipped", ops[index]["op"], header.get("run_name"),
                      run_id, str(err)[:300])
            end = index + 1
        save_state({"run_id": run_id, "sent": end})
        index = end


def _deliver_one(client: Any, ops: list[dict[str, Any]], index: int, run_id: str | None) -> tuple[str | None, int]:
    """Send the call ``ops[index]`` (with the params, metrics and tags calls that follow it, as one batch);
    return the run's id and the index of the next call."""
    from mlflow.entities import Metric, Param, RunTag

    header, op = ops[0], ops[index]
    kind, end = op["op"], index + 1
    if kind == "create":
        exp = mlflow_runs.experiment_id({"experiment": op["experiment"], "mlflow": {
            "tracking_uri": header["tracking_uri"], "artifact_location": op.get("artifact_location")}})
        mlflow_runs.end_stale_runs(exp, op["tags"][mlflow_runs.STEP_TAG], op["run_name"])
        tags = dict(op["tags"])
        parent = resolve(op.get("parent"))
        if parent:
            tags["mlflow.parentRunId"] = parent
        run_id = client.create_run(exp, start_time=op["time"], tags=tags, run_name=op["run_name"]).info.run_id
        mlflow_runs.supersede(exp, op["tags"][mlflow_runs.STEP_TAG], run_id)
    elif kind == "attach":
        run_id = resolve(op["run"])
    elif kind == "resume":
        exp = client.get_run(run_id).info.experiment_id
        mlflow_runs.end_stale_runs(exp, op["step"], op["run_name"], keep=run_id)
        client.update_run(run_id, status="RUNNING")
    elif kind in ("params", "metrics", "tags"):
        # consecutive params, metrics and tags calls go as one log_batch (MLflow cuts it to its limits)
        params, metrics, tags = {}, [], {}
        while end <= len(ops) and ops[end - 1]["op"] in ("params", "metrics", "tags"):
            batch = ops[end - 1]
            params.update(batch.get("params", {}))
            tags.update(batch.get("tags", {}))
            metrics += [Metric(k, v, t, s) for k, v, t, s in batch.get("metrics", [])]
            end += 1
        end -= 1
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
    elif kind == "artifact":
        if Path(op["path"]).is_file():
            client.log_artifact(run_id, op["path"], op.get("artifact_path"))
        else:
            log.warning("MLflow: %s no longer exists; not logged to run %s", op["path"], run_id)
    elif kind == "dict":
        client.log_dict(run_id, op["data"], op["file"])
    elif kind == "text":
        client.log_text(run_id, op["text"], op["file"])
    elif kind == "supersede":
        exp = client.get_run(run_id).info.experiment_id
        keep = {run.info.run_id for run in client.search_runs([exp], op["filter"])
                if run.data.tags.get("mlflow.runName") in set(op["keep_names"])}
        mlflow_runs.supersede_runs(exp, op["filter"], keep, run_id)
    elif kind == "end":
        if header["op"] == "create":  # an attached run (the selection on the search's run) is not ours to end
            client.set_terminated(run_id, status=op["status"], end_time=op["time"])
    else:
        raise ValueError(f"unknown journal call {kind!r}")
    return run_id, end


def describe(ops: Iterable[dict[str, Any]]) -> str:
    """What a list of calls holds, in words: for the log line that says what was not delivered."""
    ops = list(ops)
    parts = []
    if any(op["op"] == "create" for op in ops):
        parts.append("the run itself")
    metrics = [m for op in ops if op["op"] == "metrics" for m in op["metrics"]]
    if metrics:
        steps = sorted({m[3] for m in metrics})
        parts.append(f"{len(metrics)} metric values (steps {steps[0]}-{steps[-1]})")
    params = sum(len(op["params"]) for op in ops if op["op"] == "params")
    if params:
        parts.append(f"{params} params")
    files = [Path(op.get("path", op.get("file", ""))).name for op in ops if op["op"] in ("artifact", "dict", "text")]
    if files:
        parts.append("artifacts " + ", ".join(files))
    if any(op["op"] == "end" for op in ops):
        parts.append("its end status")
    return "; ".join(parts) or "nothing"


class RunLog:
    """One MLflow run, logged through its :class:`Journal`: the calls never fail and never wait for the server.

    Make one with :meth:`create` (a new run of a pipeline step), :meth:`attach`
    (an existing run, e.g. the search's parent run) or :meth:`resume` (the run
    of an interrupted attempt, whose journal goes on); end it with :meth:`end`.
    """

    def __init__(self, journal: Journal, name: str):
        self.journal, self.name = journal, name
        self.uri = journal.ops()[0]["tracking_uri"]
        self._ended = False
        self._run_id: str | None = None
        self.last_error: str | None = None  # why the last try did not deliver (the store's error, or a lock)
        self._steps: dict[str, int] = {}  # the last step logged per metric (read from the journal once)

    @classmethod
    def create(cls, config: dict[str, Any], stage: str, fold: int | str | None = None, run_name: str | None = None,
               parent: dict[str, str] | None = None, tags: dict[str, str] | None = None,
               folder: str | Path | None = None) -> RunLog:
        """A new run of the step (stage, fold, run name), tagged as :func:`ferseq.common.mlflow_runs.start_run` tags it.

        ``parent``: a reference to the parent run (:attr:`ref` of its RunLog, or ``{"run_id": id}``).
        """
        from mlflow.tracking.context import registry

        for key, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        name = run_name or (stage if fold is None else f"{stage}-fold{fold}")
        mlflow_cfg = config.get("mlflow", {})
        uri = absolute_uri(mlflow_cfg.get("tracking_uri", mlflow_runs.DEFAULT_URI))
        mlflow_runs.check_uri(uri)
        all_tags = registry.resolve_tags({**mlflow_runs.run_tags(config, stage, fold, name, tags), "mlflow.runName": name})
        folder = Path(folder) if folder is not None else default_folder()
        _send_leftovers(folder, name)
        journal = Journal.new(folder, name)
        journal.append({"op": "create", "tracking_uri": uri, "experiment": config.get("experiment", "ferseq"),
                        "artifact_location": mlflow_runs.artifact_location(mlflow_cfg), "run_name": name,
                        "tags": all_tags, "parent": parent, "time": _now()})
        run = cls(journal, name)
        run.log_dict(config, "config.json")
        return run

    @classmethod
    def attach(cls, config: dict[str, Any], run: dict[str, str], name: str,
               folder: str | Path | None = None) -> RunLog:
        """Log into an existing run (``run``: ``{"run_id": id}`` or a journal reference); :meth:`end` leaves its status."""
        for key, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        uri = absolute_uri(config.get("mlflow", {}).get("tracking_uri", mlflow_runs.DEFAULT_URI))
        journal = Journal.new(Path(folder) if folder is not None else default_folder(), name)
        journal.append({"op": "attach", "tracking_uri": uri, "run": run, "time": _now()})
        return cls(journal, name)

    @classmethod
    def resume(cls, path: str | Path) -> RunLog | None:
        """The run of an interrupted attempt, whose journal ``path`` goes on; None when that journal is gone."""
        journal = Journal(path)
        ops = journal.ops()
        if not ops or ops[0]["op"] != "create" or journal.end_status() == "FINISHED":
            return None
        for key, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        header = ops[0]
        journal.append({"op": "resume", "step": header["tags"][mlflow_runs.STEP_TAG], "run_name": header["run_name"],
                        "time": _now()})
        run = cls(journal, header["run_name"])
        _sender().add(run)
        return run

    @property
    def run_id(self) -> str | None:
        """The run's MLflow id, once the server has it."""
        if self._run_id is None and self.journal.state_path.is_file():
            self._run_id = self.journal.run_id
        return self._run_id

    @property
    def ref(self) -> dict[str, str]:
        """How another run or job names this one: its id when it exists, else its journal."""
        if self.run_id:
            return {"run_id": self.run_id}
        self.journal.mark_referenced()
        return {"journal": str(self.journal.path)}

    def log_params(self, params: dict[str, Any]) -> None:
        self._add({"op": "params", "params": {k: str(v) for k, v in params.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = _now()
        for key in metrics:
            self._steps[key] = max(self.last_step(key), int(step))
        self._add({"op": "metrics", "metrics": [[k, float(v), now, int(step)] for k, v in metrics.items()]})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._add({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, sent from where it is when the server answers (it must still be there then)."""
        self._add({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_dict(self, data: Any, file: str) -> None:
        self._add({"op": "dict", "data": data, "file": file})

    def log_text(self, text: str, file: str) -> None:
        self._add({"op": "text", "text": text, "file": file})

    def supersede_others(self, filter_string: str, keep_names: list[str]) -> None:
        """Mark the runs that match ``filter_string`` and whose names are not in ``keep_names`` superseded by
        this run (done when the server has this call: the runs it names may not exist before)."""
        self._add({"op": "supersede", "filter": filter_string, "keep_names": list(keep_names)})

    def last_step(self, key: str) -> int:
        """The last step logged for metric ``key`` (see :meth:`Journal.last_step`)."""
        if key not in self._steps:
            self._steps[key] = self.journal.last_step(key)
        return self._steps[key]

    def _add(self, op: dict[str, Any]) -> None:
        if self._ended:
            raise RuntimeError(f"MLflow run {self.name} has ended")
        self.journal.append(op)
        _sender().add(self)

    def send(self, wait: float = 0.0, eager: bool = False, lock_wait: float = 0.0) -> bool:
        """Send what is pending, in this thread, if the server may be tried now (retrying every few seconds
        until ``wait`` seconds have passed); True when nothing is left. Never raises for an unreachable
        server; :attr:`last_error` then says why not. ``eager``: someone waits for the result, so a failed
        try is repeated within seconds rather than after the growing backoff. ``lock_wait``: how long to wait
        for another process that is sending this journal at the moment. (Training loops never call this:
        their calls go through a thread.)"""
        eager = eager or wait > 0
        deadline = time.monotonic() + wait
        server = _server(self.uri)
        while True:
            now = time.monotonic()
            if now >= server.retry_at:
                try:
                    done = self.journal.send(probe=not server.answered or server.down_since is not None,
                                             lock_wait=lock_wait)
                    self.run_id  # noqa: B018 - cached while the state file is there
                    if done is False:  # another process sends it: the store was not asked
                        self.last_error = ("another process is sending this journal at the moment (its job's "
                                           "sender thread, or another `ferseq mlflow sync`)")
                        return False
                    if done is None:  # nothing to send: the store was not asked
                        self.last_error = None
                        return True
                except Unreachable as err:
                    self.last_error = str(err)
                    if server.down_since is None:
                        server.down_since = now
                        log.warning("MLflow: %s does not answer (%s); training goes on, its runs are kept in %s and "
                                    "sent when it answers", self.uri, err, self.journal.path.parent)
                    # while training, tries grow apart; while a run's end waits for the server, every few seconds
                    server.retry_at = now + (min(server.backoff, FIRST_BACKOFF) if eager else server.backoff)
                    server.backoff = min(2 * server.backoff, MAX_BACKOFF)
                else:
                    if server.down_since is not None:
                        log.info("MLflow: %s answers again after %.0f s; the kept calls were sent", self.uri,
                                 now - server.down_since)
                    server.retry_at, server.backoff, server.down_since, server.answered = 0.0, FIRST_BACKOFF, None, True
                    server.give_up_at = None
                    self.last_error = None
                    return done
            if now >= deadline:
                return False
            time.sleep(max(0.0, min(server.retry_at, deadline) - time.monotonic()))

    def end(self, status: str = "FINISHED", wait: float | None = None) -> bool:
        """End the run (FINISHED, FAILED, KILLED) and send everything, waiting at most ``wait`` seconds (default
        :func:`close_wait`) for the server; True when all was sent. The journal of a finished run is then
        removed; an interrupted one's stays for the step's next attempt (see the module docstring)."""
        if self._ended:
            return True
        self.journal.append({"op": "end", "status": status, "time": _now()})
        self._ended = True
        if wait is None:  # one wait per server, not one per run: a grid job ends many runs at once
            server = _server(self.uri)
            if server.give_up_at is None:
                server.give_up_at = time.monotonic() + close_wait()
            wait = max(0.0, server.give_up_at - time.monotonic())
        if _sender().finish(self, wait):
            if status == "FINISHED":
                self.journal.remove()
            return True
        log.warning("MLflow: not delivered to %s for run %s: %s. It is kept in %s; `ferseq mlflow sync %s` sends it",
                    self.uri, self.name, describe(self.journal.pending()), self.journal.path,
                    self.journal.path.parent)
        return False


class _Sender:
    """The thread that sends this process's runs, so that a training loop never waits for the tracking
    server (a call to a server that is starting up can take MLflow's whole timeout). One per process."""

    def __init__(self):
        self.runs: list[RunLog] = []
        self.finishing = 0  # runs whose end is waiting: retry every few seconds, not on the training backoff
        # Rounds over the runs, started and completed: a run's end waits for at least one round that began
        # after its end was written, so that even a wait of 0 s tries the store once (and says why not).
        self.rounds_started = 0
        self.rounds_done = 0
        self.round_wanted = 0
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="ferseq-mlflow-sender", daemon=True)
        self.thread.start()

    def add(self, run: RunLog) -> None:
        with self.changed:
            if run not in self.runs:
                self.runs.append(run)
            self.changed.notify_all()

    def finish(self, run: RunLog, wait: float) -> bool:
        """Wait until everything of ``run`` is sent, at most ``wait`` seconds, but at least one round of
        the sender that started now (one try, unless the server is in its backoff); whether it was sent."""
        deadline = time.monotonic() + wait
        with self.changed:
            self.finishing += 1
            if run not in self.runs:
                self.runs.append(run)
            tried = self.round_wanted = max(self.round_wanted, self.rounds_started + 1)
            self.changed.notify_all()
            try:
                while run in self.runs and self.thread.is_alive():
                    left = deadline - time.monotonic()
                    if self.rounds_done >= tried and left <= 0:
                        break
                    self.changed.wait(timeout=1.0 if self.rounds_done < tried else left)
                return run not in self.runs or not run.journal.pending()
            finally:
                self.finishing -= 1

    def _loop(self) -> None:
        while True:
            with self.changed:
                while not self.runs:
                    self.changed.wait()
                runs, closing = list(self.runs), self.finishing > 0
                self.rounds_started += 1
                this_round = self.rounds_started
            done = []
            for run in runs:
                try:
                    if run.send(eager=closing):
                        done.append(run)
                except Exception:  # noqa: BLE001 - a bug here must not end the thread: the journal keeps the calls
                    log.exception("MLflow: sending %s failed", run.journal.path)
            with self.changed:
                for run in done:
                    if not run.journal.pending() and run in self.runs:
                        self.runs.remove(run)
                self.rounds_done = this_round
                self.changed.notify_all()
                # something is waiting for the server: back off, unless a run's end waits for another round
                if self.runs and len(done) < len(runs) and self.round_wanted <= this_round:
                    retry = min(_server(r.uri).retry_at for r in self.runs) - time.monotonic()
                    self.changed.wait(timeout=max(0.05, retry))


_the_sender: _Sender | None = None
_sender_lock = threading.Lock()


def _sender() -> _Sender:
    global _the_sender
    with _sender_lock:
        if _the_sender is None or not _the_sender.thread.is_alive():
            _the_sender = _Sender()
        return _the_sender


def _now() -> int:
    return int(time.time() * 1000)


def _send_leftovers(folder: Path, name: str) -> None:
    """Send and remove the journals that earlier attempts of run ``name`` left in ``folder`` (an attempt
    that starts afresh: Snakemake never runs a step twice at once, so their jobs are gone)."""
    if not folder.is_dir():
        return
    for journal in journals(folder.glob(f"{Journal.prefix(name)}*{SUFFIX}")):
        ops = journal.ops()
        if ops and "tracking_uri" not in ops[0]:
            # calls appended after their journal was sent and removed (a resumed attempt of a run it had ended):
            # no store to send them to; kept for `ferseq mlflow sync` to report, never a reason to fail a step
            log.warning("%s: MLflow calls without the run they belong to (%s first); left as they are",
                        journal.path, ops[0].get("op"))
            continue
        if ops and RunLog(journal, name).send():
            journal.remove()


def journals(folders: Iterable[str | Path]) -> list[Journal]:
    """Every journal under ``folders`` (searched recursively), oldest first."""
    found = set()
    for folder in map(Path, folders):
        if folder.is_file() and folder.name.endswith(SUFFIX):
            found.add(folder)
        elif folder.is_dir():
            found.update(folder.rglob(f"*{SUFFIX}"))
    return [Journal(p) for p in sorted(found, key=lambda p: p.stat().st_mtime)]


def sync(folders: Iterable[str | Path], wait: float = 0.0, quiet: bool = False) -> tuple[list[Path], list[Path]]:
    """Send the journals under ``folders`` (``ferseq mlflow sync``); return (sent in full, still pending).

    A journal whose run has ended and was sent in full is removed. One that is
    still being written (its job is running, its run not ended) is sent as far
    as it goes and kept. One that another process is sending at that moment
    (its job's sender thread, another sync) is waited for, up to ``wait`` or
    :data:`LOCK_WAIT` seconds, whichever is longer. What stays pending is named
    in the log with the reason: the store's error, or the other process.
    """
    sent, pending = [], []
    for journal in journals(folders):
        ops = journal.ops()
        if not ops:
            continue
        run = RunLog(journal, ops[0].get("run_name", journal.path.stem))
        _server(run.uri).retry_at = 0.0  # asked for now: whatever this process tried before
        # a journal that its job's sender is sending at this moment is waited for, then tried here
        done = run.send(wait, eager=True, lock_wait=max(wait, LOCK_WAIT))
        if done and not journal.path.is_file():  # sent in full and removed by its job meanwhile
            sent.append(journal.path)
            continue
        ended = any(op["op"] == "end" for op in journal.ops())
        if done and ended:
            journal.remove()
            sent.append(journal.path)
        else:
            pending.append(journal.path)
            if not quiet:
                why = f" ({run.last_error})" if run.last_error else ""
                log.warning("MLflow: %s: %s", journal.path, "run still open (its job may be running)" if done else
                            f"not delivered to {run.uri}{why}: {describe(journal.pending())}")
    return sent, pending

"""Scale-out: every rule is sized for a scheduler, the SLURM profile resolves, the plugin loads,
the conda env matches the package, and runs can go to a real `mlflow server`."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml
from snakemake.iocontainers import ResourceList

from conftest import REPO, run_snakemake, write_config
from ferseq import tracking

SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
GPU_RULES = {"frame_model", "features"}


def workflow_rules(config: dict | None = None) -> tuple[dict, set[str]]:
    """The rules of the Snakefile as Snakemake parses them, by name, and the local rules
    (by default with ``data.import`` on, so every rule exists)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, Quietness, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            snakefile=REPO / "Snakefile", workdir=REPO, resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(config=config or {"data": {"import": {"format": "ravdess"}}}))
        workflow = workflow_api._workflow  # the parsed workflow; the public API only prints rules
        return {rule.name: rule for rule in workflow.rules}, set(workflow._localrules)


def declared(rule) -> dict:
    """A rule's declared resources (``_cores`` = its threads), as plain values."""
    return {k: v.value for k, v in rule.resources.items() if k != "tmpdir"}


def test_every_rule_declares_log_benchmark_threads_resources_and_env():
    rules, local = workflow_rules()
    assert "import_annotations" in rules and local == {"all"}
    for name, rule in rules.items():
        if name in local:
            continue
        assert rule.log, f"rule {name} has no log"
        assert rule.benchmark, f"rule {name} has no benchmark"
        resources = declared(rule)
        assert {"mem_mb", "runtime"} <= set(resources), f"rule {name} lacks mem_mb or runtime: {set(resources)}"
        assert resources["_cores"] >= 1
        assert rule.conda_env == "../../envs/ferseq.yaml", name
        # Only the CNN rules ask for a GPU, and they always do.
        assert resources.get("gpu") == (1 if name in GPU_RULES else None), name
    assert rules["sequence_model"]._group == "sequence_grid_{fold}"  # a fold's grid jobs are batched on a cluster


def test_conda_env_matches_the_package_dependencies():
    env = yaml.safe_load((REPO / "envs" / "ferseq.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert [re.sub(r"\s", "", d) for d in pip] == [re.sub(r"\s", "", d) for d in pyproject["project"]["dependencies"]]
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"


def parse_dry_run(output: str) -> list[dict]:
    """Each planned job of a ``snakemake -n`` printout: rule, resources, and the group it runs in."""
    jobs, group = [], None
    for line in output.splitlines():
        if "Group job" in line:
            group = line.split("Group job")[1].split()[0]
        elif (rule := re.match(r"^(\s*)(?:local)?rule (\w+):", line)):
            jobs.append({"rule": rule.group(2), "group": group if rule.group(1) else None, "resources": {}})
        elif line.strip().startswith("resources:") and jobs:
            jobs[-1]["resources"] = dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
    return jobs


@pytest.fixture(scope="module")
def slurm_dry_run(tmp_path_factory) -> list[dict]:
    """The jobs of ``snakemake --profile workflow/profiles/slurm --dry-run`` on the demo config."""
    folder = tmp_path_factory.mktemp("slurm")
    config = write_config(folder / "config.yaml")
    done = run_snakemake(folder, "--configfile", str(config), "--profile", str(SLURM_PROFILE), "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return parse_dry_run(done.stdout)


def test_slurm_profile_dry_run_sizes_every_job(slurm_dry_run):
    jobs = slurm_dry_run
    rules, _ = workflow_rules({})
    assert len(jobs) == 17 and {job["rule"] for job in jobs} == {"all"} | (set(rules) - {"import_annotations"})
    for job in jobs:
        if job["rule"] == "all":
            continue
        res, rule = job["resources"], declared(rules[job["rule"]])
        # The rule's own figures reach the scheduler; threads become --cpus-per-task.
        assert int(res["mem_mb"]) == rule["mem_mb"] and int(res["runtime"]) == rule["runtime"]
        assert int(res["cpus_per_task"]) == rule["_cores"], job
        gpu = job["rule"] in GPU_RULES
        assert res["slurm_partition"] == ("gpu" if gpu else "cpu"), job
        assert res.get("gpu") == ("1" if gpu else None), job
        assert job["group"] == ("sequence_grid_0" if job["rule"] == "sequence_model" else None), job


def test_slurm_profile_packs_a_folds_grid_jobs_three_to_a_slurm_job(tmp_path):
    # 2 folds x 3 architectures x 3 hidden sizes = 9 grid jobs per fold -> 3 group jobs per fold.
    config = write_config(tmp_path / "config.yaml", split={"unit": "segment", "scheme": "kfold", "k": 2},
                          sequence_model__hidden=[16, 32, 64])
    done = run_snakemake(tmp_path, "--configfile", str(config), "--profile", str(SLURM_PROFILE), "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = [job for job in parse_dry_run(done.stdout) if job["rule"] == "sequence_model"]
    assert len(jobs) == 18
    headers = re.findall(r"Group job (sequence_grid_\d+)", done.stdout)
    assert sorted(headers) == ["sequence_grid_0"] * 3 + ["sequence_grid_1"] * 3


def test_slurm_plugin_loads_and_turns_rule_resources_into_sbatch_options(slurm_dry_run, tmp_path):
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    plugin = ExecutorPluginRegistry().get_plugin("slurm")
    assert plugin.name == "slurm" and plugin.common_settings.non_local_exec

    jobs = {job["rule"]: job for job in slurm_dry_run}
    params = {"run_uuid": "ferseq", "slurm_logfile": "log", "comment_str": "c", "account": "", "partition": "",
              "workdir": str(tmp_path)}

    def sbatch(rule: str) -> str:
        values = {k: int(v) if v.isdigit() else v for k, v in jobs[rule]["resources"].items()}
        job = type("Job", (), {"resources": ResourceList(fromdict=values), "threads": values["cpus_per_task"]})()
        return get_submit_command(job, params) + set_gres_string(job)

    frame_model = sbatch("frame_model")
    assert "-t 720" in frame_model and "--mem 8000" in frame_model and "--cpus-per-task=2" in frame_model
    assert "--gpus=1" in frame_model
    faces = sbatch("faces")
    assert "--mem 1500" in faces and "--cpus-per-task=1" in faces and "gpu" not in faces


FAKE_SLURM_COMMAND = """#!/bin/sh
echo "$(basename "$0") $*" >> "{calls}"
exit 1
"""


def test_slurm_run_submits_with_the_rule_resources_and_warns_about_a_local_store(tmp_path, monkeypatch):
    """The real plugin against SLURM commands that only record their arguments and fail."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for command in ("sbatch", "sinfo", "sacct", "squeue", "scontrol", "sacctmgr", "sshare"):
        (bin_dir / command).write_text(FAKE_SLURM_COMMAND.format(calls=calls))
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = write_config(tmp_path / "config.yaml")
    done = run_snakemake(tmp_path, "--configfile", str(config), "--profile", str(SLURM_PROFILE), "--retries", "0",
                         "--slurm-init-seconds-before-status-checks", "1")
    assert done.returncode != 0  # the fake sbatch refuses every job
    output = done.stdout + done.stderr
    assert "mlflow.tracking_uri is a local sqlite store but jobs run on a cluster" in output
    # Only the first job (segments) can be submitted; its sbatch line carries the rule's figures.
    sbatch = [line for line in calls.read_text().splitlines() if line.startswith("sbatch ")]
    rules, _ = workflow_rules({})
    segments = declared(rules["segments"])
    assert len(sbatch) == 1 and "--comment rule_segments" in sbatch[0]
    for option in ("-p cpu", f"-t {segments['runtime']}", f"--mem {segments['mem_mb']}",
                   f"--cpus-per-task={segments['_cores']}"):
        assert f" {option} " in sbatch[0], option


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback with a database backend, as the README starts it on a cluster."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
               "--artifacts-destination", str(tmp_path / "server-artifacts")]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start (exit {server.poll()})")
                time.sleep(0.3)
        yield uri, tmp_path
    finally:
        server.terminate()
        server.wait(timeout=30)
        mlflow.set_tracking_uri(None)


def test_runs_go_to_a_tracking_server(mlflow_server):
    uri, folder = mlflow_server
    cfg = {"experiment": "on-the-cluster", "mlflow": {"tracking_uri": uri, "artifact_location": None}}
    assert not tracking.is_local_store(cfg)
    with tracking.start_run(cfg, "evaluate", fold=1) as run:
        mlflow.log_metric("macro_f1", 0.5)
    client = mlflow.MlflowClient(uri)
    stored = client.get_run(run.info.run_id)
    assert stored.data.tags["stage"] == "evaluate" and stored.data.metrics["macro_f1"] == 0.5
    # Artifacts travel through the server to its destination, not to the job's working directory.
    assert list((folder / "server-artifacts").rglob("config.json"))
    assert not (Path.cwd() / "mlartifacts").exists() and not (folder / "mlartifacts").exists()

"""The SLURM profile against a real single-node SLURM (tests/slurm_cluster.py): the demo DAG runs as
SLURM jobs sized from its rules and gives the local run's summary; a group no node can hold is refused."""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter

import pytest
from test_profiles import SLURM_PROFILE, parse_dry_run

import slurm_cluster
from conftest import SMALL, run_snakemake, write_config

pytestmark = pytest.mark.slurm
# The plugin checks job status this long after a submission or a finished job (default 40 s), then
# 10 s later each time, and so on; 4 s catches the demo's short jobs (about 10-15 s, most of it
# Snakemake starting inside the job) at the second check. Its squeue status needs MinJobAge >= 3x it.
FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "4")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A private single-node SLURM for this module, shut down whatever happens."""
    missing = slurm_cluster.missing_commands()
    reason = None
    if os.geteuid() != 0:
        reason = "a private SLURM needs root (slurmd starts the jobs)"
    elif missing:
        reason = (f"SLURM is not installed here ({', '.join(missing)} missing): `make test` as root "
                  "installs slurmctld, slurmd, slurm-client and munge")
    if reason:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI must run the SLURM tests: {reason}")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    started = slurm_cluster.start(folder)  # stops what it started if it fails
    try:
        yield started
    finally:
        slurm_cluster.stop(folder)


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    """SLURM's commands (and the jobs, which inherit the environment) talk to the private cluster."""
    for name, value in cluster.env.items():
        monkeypatch.setenv(name, value)
    return cluster


def slurm_jobs(workdir) -> list[dict]:
    """SLURM's own record (``scontrol show job``) of every job that ran in ``workdir``."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=True).stdout
    records = [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in out.splitlines() if line.startswith("JobId=")]
    return [r for r in records if r.get("WorkDir") == str(workdir)]


def minutes(limit: str) -> int:
    """A SLURM time limit (``[D-]HH:MM:SS`` or ``MM:SS``) in minutes."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 1440 + parts[0] * 60 + parts[1]


def megabytes(memory: str) -> int:
    value, unit = re.fullmatch(r"([\d.]+)([MGT]?)", memory).groups()
    return round(float(value) * {"": 1, "M": 1, "G": 1024, "T": 1024**2}[unit])


def figures(job: dict) -> tuple:
    """What a job asks of SLURM, as Snakemake printed it: partition, CPUs, MB, minutes, GPUs."""
    res = job["resources"]
    return (res["slurm_partition"], int(res["cpus_per_task"]), int(res["mem_mb"]), int(res["runtime"]),
            int(res.get("gpu", 0)))


def expected_submissions(jobs: list[dict]) -> Counter:
    """One SLURM job per non-local job that Snakemake ran, and one per group job, whose jobs run side by
    side (CPUs, memory and GPUs added up, the longest runtime): label and figures of each."""
    units: dict = {}
    for job in jobs:
        if not job["local"]:
            units.setdefault(("group", job["group_job"]) if job["group"] else ("job", len(units)), []).append(job)
    expected = Counter()
    for members in units.values():
        asks = [figures(job) for job in members]
        partitions = {a[0] for a in asks}
        assert len(partitions) == 1, members
        rules = "_".join(sorted({job["rule"] for job in members}))
        label = f"{members[0]['group']}_{rules}" if members[0]["group"] else rules
        expected[(label, partitions.pop(), *(sum(a[i] for a in asks) for i in (1, 2)), max(a[3] for a in asks),
                  sum(a[4] for a in asks))] += 1
    return expected


def submitted(record: dict) -> tuple:
    """The same figures from SLURM's record; the plugin's comment is ``rule_<rule or group>[_wildcards_...]``."""
    label = record["Comment"].removeprefix("rule_").split("_wildcards_")[0]
    gpus = re.search(r"gpu:(\d+)", record.get("TresPerJob", ""))
    return (label, record["Partition"], int(record["NumCPUs"]), megabytes(record["MinMemoryNode"]),
            minutes(record["TimeLimit"]), int(gpus.group(1)) if gpus else 0)


def test_demo_dag_runs_as_slurm_jobs_sized_from_its_rules_and_matches_a_local_run(on_cluster, demo_run, tmp_path):
    slurm_dir = tmp_path / "slurm"
    slurm_dir.mkdir()
    # The session's local demo run (conftest's demo_run) has the same config: the SLURM run is compared with it.
    config = write_config(slurm_dir / "config.yaml", **SMALL)
    profile = ("--configfile", str(config), "--profile", str(SLURM_PROFILE), *FAST_STATUS)
    plan = run_snakemake(slurm_dir, *profile, "--dry-run")
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    planned = {job["rule"]: figures(job) for job in parse_dry_run(plan.stdout) if job["rule"] != "all"}

    done = run_snakemake(slurm_dir, *profile, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    log = done.stdout + done.stderr
    assert "mlflow.tracking_uri is a local sqlite store but jobs run on a cluster" in log

    # Every job Snakemake ran (checkpoints may add jobs after the plan) asked for what the profile plans
    # for its rule; local rules ran here, every other job as a SLURM job granted exactly that.
    ran = parse_dry_run(done.stdout + "\n" + done.stderr)
    assert set(planned) <= {job["rule"] for job in ran}
    for job in ran:
        if not job["local"] and job["rule"] in planned:
            assert figures(job) == planned[job["rule"]], job
    records = slurm_jobs(slurm_dir)
    assert {r["JobState"] for r in records} == {"COMPLETED"} and {r["ExitCode"] for r in records} == {"0:0"}
    assert Counter(submitted(r) for r in records) == expected_submissions(ran)
    assert not {job["rule"] for job in ran if job["local"]} & {submitted(r)[0] for r in records}
    assert {r["Partition"] for r in records if "gpu:1" in r.get("TresPerJob", "")} == {"gpu"}  # CNN rules got the GPU
    # slurmctld's completion log (no accounting database here) has every one of them, completed.
    finished = [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in on_cluster.jobcomp.read_text().splitlines()]
    finished = {f["JobId"]: f for f in finished if f.get("WorkDir") == str(slurm_dir)}
    assert set(finished) == {r["JobId"] for r in records}
    assert all(f["JobState"] == "COMPLETED" for f in finished.values())

    # Same config, same tables: the cluster run computes what the local run computes.
    summary = "results/evaluation/summary.csv"
    assert (slurm_dir / summary).read_text() == (demo_run / summary).read_text()


def test_a_group_no_node_can_hold_is_refused_before_anything_is_submitted(on_cluster, tmp_path):
    # One grid job per hidden size, all packed into one SLURM job: one CPU more than the node has.
    size = on_cluster.cpus + 1
    grid = {**SMALL["sequence_model"], "architectures": ["lstm"], "hidden": list(range(8, 8 + size))}
    config = write_config(tmp_path / "config.yaml", **{**SMALL, "sequence_model": grid})
    done = run_snakemake(tmp_path, "--configfile", str(config), "--profile", str(SLURM_PROFILE),
                         "--group-components", f"sequence_grid_{{fold}}={size}", *FAST_STATUS, timeout=120)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"group job sequence_grid_0 ({size} jobs of sequence_model) asks for {size} CPUs" in output
    assert f"but the largest node of partition cpu has {on_cluster.cpus} CPUs" in output
    assert f"--group-components sequence_grid_{{fold}}={on_cluster.cpus}" in output
    assert slurm_jobs(tmp_path) == []  # not even the first job was submitted

"""CPU-only clusters: the profile workflow/profiles/slurm-cpu submits every rule without a GPU request.

Checked through the profile's dry run (what Snakemake would submit) and the SLURM plugin's own sbatch
options, with every rule in the DAG that can ask for a GPU (the fine-tuning and pretraining stages on); and the
profile is kept equal to workflow/profiles/slurm apart from its GPU settings.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from snakemake.iocontainers import ResourceList

from conftest import REPO, run_snakemake, write_config
from test_profiles import GPU_RULES, SLURM_PROFILE, parse_dry_run

CPU_PROFILE = REPO / "workflow" / "profiles" / "slurm-cpu"


def sbatch_options(resources: dict[str, str]) -> str:
    """The sbatch options snakemake-executor-plugin-slurm builds for a job with these (dry-run) resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    values = {k: int(v) if v.isdigit() else v for k, v in resources.items()}
    job = type("Job", (), {"resources": ResourceList(fromdict=values), "threads": values["cpus_per_task"]})()
    params = {"run_uuid": "ferseq", "slurm_logfile": "log", "comment_str": "c", "account": "", "partition": "",
              "workdir": "w"}
    return get_submit_command(job, params) + set_gres_string(job)


def dry_run(tmp_path: Path, profile: Path) -> list[dict]:
    # the pretraining on an image folder (a dry run reads no image): its training job can ask for a GPU too
    config = write_config(tmp_path / "config.yaml", finetune={"enabled": True}, frame_model__init="pretrain",
                          pretrain={"images": {"format": "folder", "path": str(REPO / "tests" / "fixtures")},
                                    "init": "none"})
    done = run_snakemake(tmp_path, "--configfile", str(config), "--profile", str(profile), "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [job for job in parse_dry_run(done.stdout) if job["rule"] != "all"]


def test_cpu_profile_submits_every_rule_without_a_gpu(tmp_path):
    jobs = dry_run(tmp_path, CPU_PROFILE)
    assert GPU_RULES <= {job["rule"] for job in jobs}  # the rules that declare gpu=1 are all in this DAG
    for job in jobs:
        res = job["resources"]
        assert res["slurm_partition"] == "cpu", job
        assert res.get("gpu", "0") == "0", job
        options = sbatch_options(res)
        assert "--gpus" not in options and "gres" not in options and "gpu" not in options, (job["rule"], options)
    # The training jobs still ask for SIGTERM before their time limit, to save their state and resume.
    frame_model = next(job for job in jobs if job["rule"] == "frame_model")
    assert "--signal=TERM@600" in sbatch_options(frame_model["resources"])


def test_the_gpu_profile_does_ask_for_gpus(tmp_path):
    # The same check must fail on the GPU profile: its CNN rules ask for a GPU on the GPU partition.
    jobs = dry_run(tmp_path, SLURM_PROFILE)
    asking = {job["rule"] for job in jobs if "--gpus=1" in sbatch_options(job["resources"])}
    assert asking == GPU_RULES


def test_cpu_profile_is_the_slurm_profile_without_gpus():
    gpu = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    cpu = yaml.safe_load((CPU_PROFILE / "config.yaml").read_text())
    assert {k: v for k, v in cpu.items() if k != "set-resources"} == {k: v for k, v in gpu.items() if k != "set-resources"}
    assert set(cpu["set-resources"]) >= set(gpu["set-resources"])
    for rule, settings in cpu["set-resources"].items():
        theirs = gpu["set-resources"].get(rule, {})
        # Everything but the GPU partition and the GPU count is the same (signals, any runtime or memory).
        assert {k: v for k, v in settings.items() if k != "gpu"} == {
            k: v for k, v in theirs.items() if k not in ("slurm_partition", "gpu_model", "gres")}, rule
        assert settings.get("gpu") == 0, rule

"""Scale-out: every rule is sized for a scheduler, the SLURM profile resolves, the plugin loads,
the conda env matches the package, and runs can go to a real `mlflow server`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import mlflow
import pytest
import yaml
from snakemake.iocontainers import ResourceList

from conftest import REPO, SCHEMAS, run_snakemake, write_config
from ferseq.common import mlflow_runs
from ferseq.faces.batch_plan import CLIP_COST, plan_from_config, runtime_minutes

SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
GPU_RULES = {"frame_model", "features", "finetune", "pretrain"}
# data.import and a pretraining image set: every rule exists
EVERY_RULE = {"data": {"import": {"format": "ravdess"}},
              "pretrain": {"images": {"format": "folder", "path": str(REPO / "tests" / "fixtures")}}}


def workflow_rules(config: dict | None = None) -> tuple[dict, set[str]]:
    """The rules of the Snakefile as Snakemake parses them, by name, and the local rules
    (by default ``EVERY_RULE``: with ``data.import`` and a pretraining image set, so every rule exists)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, Quietness, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            snakefile=REPO / "Snakefile", workdir=REPO, resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(config=config or EVERY_RULE))
        workflow = workflow_api._workflow  # the parsed workflow; the public API only prints rules
        return {rule.name: rule for rule in workflow.rules}, set(workflow._localrules)


def declared(rule) -> dict:
    """A rule's declared resources (``_cores`` = its threads), as plain values."""
    return {k: v.value for k, v in rule.resources.items() if k != "tmpdir"}


def test_every_rule_declares_log_benchmark_threads_resources_and_env():
    rules, local = workflow_rules()
    # pretrained_weights runs where Snakemake runs (it may download), and faces_plan writes a faces batch's plan
    # there: declared like the others all the same. `default` is the top-level Snakefile's target (rule all's).
    assert {"import_annotations", "pretrain_faces", "pretrain"} <= set(rules)
    assert local == {"all", "default", "pretrained_weights", "faces_plan"}
    for name, rule in rules.items():
        if name in ("all", "default"):
            continue
        assert rule.log, f"rule {name} has no log"
        assert rule.benchmark, f"rule {name} has no benchmark"
        resources = declared(rule)
        assert {"mem_mb", "runtime"} <= set(resources), f"rule {name} lacks mem_mb or runtime: {set(resources)}"
        assert resources["_cores"] >= 1
        # faces_plan is a `run:` block, executed in Snakemake's own process, where no conda env applies
        assert rule.conda_env == (None if name == "faces_plan" else "../../envs/ferseq.yaml"), name
        # Only the CNN rules ask for a GPU, and they always do.
        assert resources.get("gpu") == (1 if name in GPU_RULES else None), name
    assert rules["sequence_model"]._group == "sequence_grid_{fold}"  # a fold's grid jobs are batched on a cluster


def test_cnn_jobs_ask_for_a_cpu_per_loader_worker_and_one_for_the_main_process():
    rules, _ = workflow_rules({"frame_model": {"num_workers": 5}})
    assert declared(rules["frame_model"])["_cores"] == declared(rules["features"])["_cores"] == 6


def test_grid_jobs_ask_for_a_gpu_only_when_the_config_says_cuda():
    # auto (the default) cannot know the node; it never asks, so a CPU-only cluster never sees a GPU request.
    for device in ("auto", "cpu"):
        rules, _ = workflow_rules({"sequence_model": {"device": device}})
        assert "gpu" not in declared(rules["sequence_model"]) and rules["sequence_model"]._group == "sequence_grid_{fold}"
    rules, _ = workflow_rules({"sequence_model": {"device": "cuda"}})
    # A GPU job goes alone: a group job would add up its jobs' GPUs for one process each.
    assert declared(rules["sequence_model"])["gpu"] == 1 and rules["sequence_model"]._group is None


def test_conda_env_matches_the_package_dependencies():
    env = yaml.safe_load((REPO / "envs" / "ferseq.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert [re.sub(r"\s", "", d) for d in pip] == [re.sub(r"\s", "", d) for d in pyproject["project"]["dependencies"]]
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"


def parse_dry_run(output: str) -> list[dict]:
    """Each planned job of a ``snakemake -n`` printout: rule, resources, whether it is a local rule,
    and the group it runs in (``group``: its name; ``group_job``: which of the printed group jobs)."""
    jobs, group, group_job = [], None, -1
    for line in output.splitlines():
        if "Group job" in line:
            group, group_job = line.split("Group job")[1].split()[0], group_job + 1
        elif (rule := re.match(r"^(\s*)(local)?(?:rule|checkpoint) (\w+):", line)):
            grouped = bool(rule.group(1))
            jobs.append({"rule": rule.group(3), "local": bool(rule.group(2)), "group": group if grouped else None,
                         "group_job": group_job if grouped else None, "resources": {}})
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
    # finetune and the pretraining: off in the demo config
    absent = {"import_annotations", "pretrained_weights", "finetune", "pretrain_faces", "pretrain"}
    # the target is the top-level Snakefile's `default` (rule all's inputs): `all` itself is no job
    assert len(jobs) == 17 and {job["rule"] for job in jobs} == set(rules) - absent - {"all"}
    for job in jobs:
        if job["rule"] == "default":
            continue
        res, rule = job["resources"], declared(rules[job["rule"]])
        # The rule's own figures reach the scheduler; threads become --cpus-per-task.
        assert int(res["mem_mb"]) == rule["mem_mb"] and int(res["runtime"]) == rule["runtime"]
        assert int(res["cpus_per_task"]) == rule["_cores"], job
        gpu = job["rule"] in GPU_RULES
        assert res["slurm_partition"] == ("gpu" if gpu else "cpu"), job
        assert res.get("gpu") == ("1" if gpu else None), job
        assert job["group"] == ("sequence_grid_0" if job["rule"] == "sequence_model" else None), job


# The DAG is built once (no checkpoint plans the faces batches), so Snakemake packs each fold's grid
# groups once, as the profile asks: no patch of its internals.
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
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

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
    # The CNN jobs ask for the CPUs that feed the GPU: the main process and frame_model.num_workers (2) workers.
    assert "-t 720" in frame_model and "--mem 8000" in frame_model and "--cpus-per-task=3" in frame_model
    assert "--gpus=1" in frame_model
    # The training jobs ask SLURM for SIGTERM 10 minutes before their time limit (they save and stop on it),
    # and the profile submits a failed job again, so that the next attempt resumes.
    assert "--signal=TERM@600" in frame_model and "--signal=TERM@600" in sbatch("sequence_model")
    assert "--signal" not in sbatch("select_sequence_model")
    assert yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())["retries"] >= 2
    # The demo's faces batch (all three videos, 599 frames): its time limit follows the frames it holds.
    (batch,) = faces_batches(write_config(tmp_path / "config.yaml"))
    faces = sbatch(f"faces_{batch.name}")
    assert "--mem 1500" in faces and "--cpus-per-task=1" in faces and "gpu" not in faces
    assert f"-t {runtime_minutes(batch, 'hog')} " in faces and batch.frames == 599


def faces_batches(config_path: Path) -> list:
    """The faces batches a config plans (the function the Snakefile calls, on the schema's defaults)."""
    config = yaml.safe_load(config_path.read_text())
    config["faces"] = {"batch_frames": 10000, **config.get("faces", {})}
    return plan_from_config(config, SCHEMAS / "annotations.schema.yaml").batches


def test_slurm_profile_sizes_a_faces_batch_by_its_frames(tmp_path):
    # One video per batch (faces.batch_frames: 1) and the slow MMOD detector: the woman clip (466 frames) gets
    # more time than the man's (68 frames).
    config = write_config(tmp_path / "config.yaml", faces={"batch_frames": 1, "detector": "mmod"})
    batches = {b.videos[0]: b for b in faces_batches(config)}
    done = run_snakemake(tmp_path, "--configfile", str(config), "--profile", str(SLURM_PROFILE), "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runtimes = {job["rule"]: int(job["resources"]["runtime"]) for job in parse_dry_run(done.stdout)
                if job["rule"].startswith("faces_b")}
    assert runtimes == {f"faces_{b.name}": runtime_minutes(b, "mmod") for b in batches.values()}
    woman, man = batches["woman_sad_to_happy"], batches["man_neutral_to_happy"]
    assert runtimes[f"faces_{woman.name}"] > runtimes[f"faces_{man.name}"] and woman.cost == 466 + CLIP_COST


def test_runs_go_to_a_tracking_server(mlflow_server):
    uri, folder = mlflow_server.uri, mlflow_server.folder
    cfg = {"experiment": "on-the-cluster", "mlflow": {"tracking_uri": uri, "artifact_location": None}}
    assert not mlflow_runs.is_local_store(cfg)
    with mlflow_runs.start_run(cfg, "evaluate", fold=1) as run:
        mlflow.log_metric("macro_f1", 0.5)
    client = mlflow.MlflowClient(uri)
    stored = client.get_run(run.info.run_id)
    assert stored.data.tags["stage"] == "evaluate" and stored.data.metrics["macro_f1"] == 0.5
    # Artifacts travel through the server to its destination, not to the job's working directory.
    assert list((folder / "server-artifacts").rglob("config.json"))
    assert not (Path.cwd() / "mlartifacts").exists() and not (folder / "mlartifacts").exists()

"""ImageNet init without network: timm's caches built for real (random weights), HF_HUB_OFFLINE=1, nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import CLASSES, run_snakemake, write_config
from ferseq.common.errors import ConfigError
from ferseq.frame_model import network, pretrained_weights

XCEPTION_FILE = "xception-43020ad28.pth"  # legacy_xception's weights come from a URL into torch's hub cache
HUB_MODEL, HUB_REPO = "resnet10t", "timm/resnet10t.c3_in1k"  # a small model whose weights come from the HF hub


def torch_hub_cache(torch_home: Path) -> dict[str, torch.Tensor]:
    """legacy_xception's weights (random, with the ImageNet classifier) where timm looks for them."""
    source = timm.create_model("legacy_xception", pretrained=False)
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), torch_home / "hub" / "checkpoints" / XCEPTION_FILE)
    return source.state_dict()


def hf_hub_cache(hub_cache: Path) -> dict[str, torch.Tensor]:
    """resnet10t's weights (random) in the Hugging Face hub cache layout that hf_hub_download reads offline."""
    source = timm.create_model(HUB_MODEL, pretrained=False)
    repo = hub_cache / ("models--" + HUB_REPO.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(repo / "snapshots" / revision / "model.safetensors"))
    return source.state_dict()


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty caches, HF_HUB_OFFLINE=1, for this process and the subprocesses it starts."""
    paths = {"TORCH_HOME": tmp_path / "torch", "HF_HOME": tmp_path / "hf", "HF_HUB_CACHE": tmp_path / "hf" / "hub"}
    for name, path in paths.items():
        path.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads its environment once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(paths["HF_HUB_CACHE"]))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return paths


def test_offline_without_cached_weights_names_key_backbone_and_ways_out(offline, tmp_path):
    with pytest.raises(ConfigError) as err:
        pretrained_weights.check_obtainable("legacy_xception", tmp_path / "weights")
    message = str(err.value)
    assert "frame_model.init" in message and "'legacy_xception'" in message and "HF_HUB_OFFLINE" in message
    assert "path of a checkpoint" in message and "set it to none" in message
    with pytest.raises(ConfigError, match="frame_model.backbone: 'no_such_net'"):
        pretrained_weights.check_obtainable("no_such_net", tmp_path / "weights")


@pytest.mark.parametrize("backbone, build_cache, cache_dir", [
    ("legacy_xception", torch_hub_cache, "TORCH_HOME"),
    (HUB_MODEL, hf_hub_cache, "HF_HUB_CACHE"),
])
def test_cached_weights_are_materialised_once_and_read_by_the_frame_model(offline, tmp_path, backbone, build_cache,
                                                                          cache_dir):
    weights = build_cache(offline[cache_dir])
    assert pretrained_weights.cached_file(backbone) is not None
    assert "timm's cache" in pretrained_weights.check_obtainable(backbone, tmp_path / "weights")

    target = pretrained_weights.weights_path(tmp_path / "weights", backbone)
    pretrained_weights.materialise(backbone, target)
    assert pretrained_weights.check_obtainable(backbone, tmp_path / "weights") == str(target)

    # The job reads only that file: the caches can go.
    for path in offline.values():
        for file in path.rglob("*"):
            if file.is_file():
                file.unlink()
    config = {"classes": CLASSES, "frame_model": {"backbone": backbone, "pretrained": True, "input_size": 64}}
    model = network.build_model(config, weights=target)
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in weights if not k.startswith("fc.")}  # the ImageNet classifier is dropped
    assert all(torch.equal(loaded[k], weights[k]) for k in loaded)


def test_an_offline_run_stops_before_any_job(offline, tmp_path):
    config = write_config(tmp_path / "config.yaml", frame_model={"pretrained": True, "input_size": 64})
    done = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "1")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "frame_model.init: imagenet needs the ImageNet weights of backbone 'legacy_xception'" in output
    assert "Traceback" not in output
    assert not (tmp_path / "results").exists()  # no job ran
    # the pretraining asks for them when the folds start from it: named as its key
    config = write_config(tmp_path / "config.yaml", frame_model={"init": "pretrain", "input_size": 64},
                          pretrain={"images": {"format": "folder", "path": str(tmp_path)}})
    done = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "1")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "pretrain.init: imagenet needs the ImageNet weights of backbone 'legacy_xception'" in output
    assert "or set pretrain.init to the path of a checkpoint file" in output


def test_the_local_rule_writes_the_weights_from_the_cache(offline, tmp_path):
    weights = torch_hub_cache(offline["TORCH_HOME"])
    config = write_config(tmp_path / "config.yaml", frame_model={"pretrained": True, "input_size": 64,
                                                               "weights_dir": str(tmp_path / "shared_weights")})
    planned = run_snakemake(tmp_path, "--configfile", str(config), "-n")
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "pretrained_weights" in planned.stdout and "ImageNet weights from timm's cache" in planned.stdout
    target = tmp_path / "shared_weights" / "legacy_xception.safetensors"
    done = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "1", str(target))
    assert done.returncode == 0, done.stderr[-3000:]
    from safetensors.torch import load_file

    written = load_file(str(target))
    assert torch.equal(written["conv1.weight"], weights["conv1.weight"]) and "fc.weight" not in written

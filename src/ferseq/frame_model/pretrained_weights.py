"""ImageNet weights for the frame model's backbone, without network on the compute nodes.

The reference method starts the frame CNN from ImageNet weights
(``frame_model.init: imagenet``). Compute nodes of most clusters have no
internet, so the weights are never fetched inside a ``frame_model`` job: the
local rule ``pretrained_weights`` runs where Snakemake runs (workstation or
login node) and writes the backbone's weights once, from timm's own cache or
its download, to ``{frame_model.weights_dir}/{backbone}.safetensors``; the jobs
only read that file. :func:`check_obtainable` runs when the DAG is built, so an
offline run without cached weights stops before any job, with the ways out.

timm keeps weights in one of two caches, by model: the Hugging Face hub cache
(``$HF_HUB_CACHE``, e.g. ``models--timm--resnet18.a1_in1k/snapshots/<rev>/model.safetensors``)
or torch's hub cache (``$TORCH_HOME/hub/checkpoints/<file>``, e.g. ``legacy_xception``'s
``xception-43020ad28.pth``).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ferseq.common.errors import ConfigError
from ferseq.common.outputs import atomic_path

log = logging.getLogger(__name__)

SAFE_NAMES = ("model.safetensors", "pytorch_model.bin")  # what timm asks the hub for, in order


def weights_path(weights_dir: str | Path, backbone: str) -> Path:
    """Where the local rule puts a backbone's weights."""
    return Path(weights_dir) / f"{backbone}.safetensors"


def source(backbone: str) -> tuple[str, str]:
    """Where timm takes the backbone's pretrained weights from: ``("hf-hub", repo[@rev])`` or ``("url", url)``."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(backbone):
        raise ConfigError(f"frame_model.backbone: {backbone!r} is not a timm model name (see timm.list_models())")
    cfg = get_pretrained_cfg(backbone)
    if cfg is not None and cfg.hf_hub_id:
        return "hf-hub", cfg.hf_hub_id
    if cfg is not None and cfg.url:
        return "url", cfg.url
    raise ConfigError(f"frame_model.init: timm has no ImageNet weights for backbone {backbone!r}; "
                      "use the path of a checkpoint, pretrain or none")


def cached_file(backbone: str) -> Path | None:
    """The backbone's weights in timm's cache (hub or torch), or None when they are not cached."""
    kind, location = source(backbone)
    if kind == "hf-hub":
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = location.partition("@")
        for name in SAFE_NAMES:
            found = try_to_load_from_cache(repo, name, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        return None
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(location).path).name
    return path if path.is_file() else None


def offline() -> bool:
    """Whether the environment says there is no network (``HF_HUB_OFFLINE``, or ferseq's own ``FERSEQ_OFFLINE``)."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "FERSEQ_OFFLINE"))


def reachable(backbone: str, timeout: float = 5.0) -> bool:
    """Whether the host that serves the backbone's weights answers (a TCP connection, nothing downloaded)."""
    kind, location = source(backbone)
    host = "huggingface.co" if kind == "hf-hub" else urlparse(location).hostname
    if offline() or not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def how_to_fix(backbone: str, key: str = "frame_model.init") -> str:
    kind, location = source(backbone)
    where = (f"the Hugging Face hub repository {location}" if kind == "hf-hub" else f"{location}")
    return (f"Ways out: run once on a machine with network (the local rule pretrained_weights writes the file "
            f"and the cluster only reads it); or put timm's file from {where} into timm's cache "
            f"({'$HF_HUB_CACHE' if kind == 'hf-hub' else '$TORCH_HOME/hub/checkpoints'}); or set "
            f"{key} to the path of a checkpoint file; or set it to none (random initialisation, "
            "not the reference method).")


def check_obtainable(backbone: str, weights_dir: str | Path, key: str = "frame_model.init") -> str:
    """Raise :class:`ConfigError` unless the backbone's ImageNet weights can be had; say how they will be.

    Nothing is downloaded here: the weights file exists, or timm's cache holds
    them, or the host that serves them answers. ``key``: the config key that asks
    for them (``frame_model.init`` or ``pretrain.init``).
    """
    target = weights_path(weights_dir, backbone)
    if target.is_file():
        return f"{target}"
    cached = cached_file(backbone)
    if cached is not None:
        return f"timm's cache ({cached})"
    if reachable(backbone):
        return "a download by the local rule pretrained_weights"
    raise ConfigError(f"{key}: imagenet needs the ImageNet weights of backbone {backbone!r}: they are "
                      f"not in {target}, not in timm's cache, and there is no network here"
                      f"{' (HF_HUB_OFFLINE is set)' if offline() else ''}. {how_to_fix(backbone, key)}")


def materialise(backbone: str, out_path: str | Path) -> Path:
    """Write the backbone's pretrained weights (headless) to ``out_path`` (safetensors), from timm's cache or network."""
    from safetensors.torch import save_file

    from ferseq.frame_model.network import create_backbone

    log.info("backbone %s: pretrained weights from %s", backbone, cached_file(backbone) or "network (timm download)")
    try:
        model = create_backbone(backbone, pretrained=True)
    except ConfigError as err:  # no network, no cache, a broken file: the user's to fix, with the ways out
        raise ConfigError(f"{err}. {how_to_fix(backbone)}") from None
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    with atomic_path(out_path) as tmp:
        save_file(state, str(tmp), metadata={"backbone": backbone, "source": ":".join(source(backbone))})
    log.info("backbone %s: %d tensors written to %s", backbone, len(state), out_path)
    return Path(out_path)

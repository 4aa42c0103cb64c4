"""Loading the weights a frame network starts from (the choice: :mod:`ferseq.common.initialisation`): a ferseq
checkpoint's whole network, checked against the network's architecture. (A backbone's own state dict, and timm's
ImageNet weights, are loaded by :func:`ferseq.frame_model.network.create_backbone`.)"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ferseq.common.errors import ConfigError

log = logging.getLogger(__name__)


def is_frame_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a ferseq frame network (``model.pt``: ``arch`` and ``state_dict``), not a backbone's
    state dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return False
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file: the backbone loader names the problem
        return False
    return isinstance(checkpoint, dict) and "arch" in checkpoint and "state_dict" in checkpoint


def check_architecture(theirs: dict, mine: dict, where: str) -> None:
    """Fail unless two networks' ``arch`` have the same backbone and FC sizes (what the weights' shapes follow)."""
    for part in ("backbone", "fc"):
        if theirs[part] != mine[part]:
            raise ConfigError(f"{where} is a network with {part} {theirs[part]}, but frame_model.{part} is "
                              f"{mine[part]}: the weights cannot be carried over; use a checkpoint of the same "
                              f"architecture, or set frame_model.{part} to {theirs[part]}")


def check_checkpoint(path: str | Path, frame_model: dict, key: str = "frame_model.init") -> None:
    """Before any job: a ferseq checkpoint given as ``key`` must be of ``frame_model``'s backbone and FC sizes (the
    ``frame_model`` settings); a backbone's state dict is checked when the job loads it."""
    if is_frame_checkpoint(path):
        arch = torch.load(path, map_location="cpu", weights_only=True)["arch"]
        check_architecture(arch, frame_model, f"{key}: the checkpoint {str(path)!r}")


def load_network(model: torch.nn.Module, path: str | Path, key: str = "frame_model.init") -> bool:
    """Start ``model`` (a :class:`ferseq.frame_model.network.FrameModel`) from the ferseq checkpoint ``path``: its
    backbone and FC layers, and its classifier when both have the same classes (in order). Returns whether the
    classifier was taken.

    The checkpoint must be of the same architecture (backbone, FC sizes): else :class:`ConfigError` naming
    ``key``, the file and what differs.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    theirs, mine = checkpoint["arch"], model.arch
    where = f"{key}: the checkpoint {str(path)!r}"
    check_architecture(theirs, mine, where)
    state = dict(checkpoint["state_dict"])
    same_head = list(theirs["classes"]) == list(mine["classes"])
    if not same_head:  # another set of classes: the network is kept, the classifier starts anew
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # same names, other shapes
        raise ConfigError(f"{where} does not fit frame_model.backbone {mine['backbone']}: {err}") from None
    missing = [k for k in missing if same_head or not k.startswith("classifier.")]
    if missing or unexpected:
        raise ConfigError(f"{where} does not fit frame_model.backbone {mine['backbone']}: {len(missing)} weights "
                          f"missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if theirs.get("input_size") != mine["input_size"]:
        log.info("%s was trained at %s px; this network reads %s px", where, theirs.get("input_size"),
                 mine["input_size"])
    log.info("network started from %s (%s)", path, "its classifier too" if same_head else
             f"a new classifier: it was trained on {theirs['classes']}, this network has {mine['classes']}")
    return same_head

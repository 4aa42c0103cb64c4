"""Where a frame network starts: ``frame_model.init`` (``imagenet | pretrain | none | PATH``).

- ``imagenet``: timm's ImageNet weights of the backbone (the reference method), written once by the local rule
  ``pretrained_weights`` (:mod:`ferseq.frame_model.pretrained_weights`); the head starts random.
- ``pretrain``: the network the ``pretrain`` stage trained on a static expression image set
  (``results/pretrain/model.pt``, :mod:`ferseq.pretrain`): backbone and FC layers, and its classifier too when
  it was trained on the study's classes (``pretrain.classes.map``), else a new classifier.
- ``none``: random initialisation.
- ``PATH``: a data-only checkpoint file: a ferseq ``model.pt`` of the same architecture (e.g. a lab's own frame
  model; as ``pretrain``), or a backbone's state dict (timm/torchvision style, safetensors or
  ``torch.save``; as ``imagenet``).

``frame_model.pretrained`` (true / false / a path) is the older spelling of the same choice (``imagenet`` /
``none`` / PATH); a config gives either, or both agreeing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ferseq.common.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where weights are read: the config check at parse time needs none
    import torch

log = logging.getLogger(__name__)

CHOICES = ("imagenet", "pretrain", "none")
PRETRAIN_MODEL = "results/pretrain/model.pt"  # what rule pretrain writes


def from_pretrained(value: bool | str) -> str:
    """``frame_model.pretrained``'s value as an ``init`` choice."""
    if value is True:
        return "imagenet"
    return str(value) if value else "none"


def choice(config: Mapping[str, Any], section: str = "frame_model") -> str:
    """The ``init`` of ``section`` (``frame_model`` or ``pretrain``): ``imagenet``, ``pretrain``, ``none`` or a
    path. ``frame_model.init`` unset: from ``frame_model.pretrained`` (default true: ``imagenet``)."""
    cfg = config.get(section) or {}
    init = cfg.get("init")
    if section != "frame_model":
        return str(init) if init else "imagenet"
    if "pretrained" in cfg and init and from_pretrained(cfg["pretrained"]) != init:
        raise ConfigError(f"frame_model.init: {init!r} and frame_model.pretrained: {cfg['pretrained']!r} say "
                          "different things; give only frame_model.init (pretrained is its older spelling: true is "
                          "imagenet, false is none)")
    return str(init) if init else from_pretrained(cfg.get("pretrained", True))


def is_path(init: str) -> bool:
    """Whether an ``init`` choice is a checkpoint path."""
    return init not in CHOICES


def problems(config: Mapping[str, Any]) -> list[str]:
    """What is wrong with the config's ``init`` choices (a missing checkpoint, a pretraining without images)."""
    found = []
    try:
        init = choice(config)
    except ConfigError as err:
        return [str(err)]
    if is_path(init) and not Path(init).is_file():
        found.append(f"frame_model.init: checkpoint {init!r} does not exist (choices: {', '.join(CHOICES)} or the "
                     "path of a checkpoint file)")
    if init == "pretrain" and not (config.get("pretrain") or {}).get("images"):
        found.append("frame_model.init: pretrain needs pretrain.images (the static image set to pretrain on: "
                     "format and path)")
    pretrain_init = choice(config, "pretrain")
    if init == "pretrain" and pretrain_init == "pretrain":
        found.append("pretrain.init: pretrain would start the pretraining from itself; use imagenet, none or a path")
    elif init == "pretrain" and is_path(pretrain_init) and not Path(pretrain_init).is_file():
        found.append(f"pretrain.init: checkpoint {pretrain_init!r} does not exist")
    return found


def describe(config: Mapping[str, Any], section: str = "frame_model", weights: str | Path | None = None) -> str:
    """Where ``section``'s network started, in words, for the logs, the model card, the summary and MLflow
    (``weights``: the file its init resolved to, when known)."""
    init = choice(config, section)
    if init == "imagenet":
        return f"ImageNet weights of {(config.get('frame_model') or {}).get('backbone', 'legacy_xception')}"
    if init == "pretrain":
        images = (config.get("pretrain") or {}).get("images") or {}
        return (f"its pretraining on the {images.get('format', '?')} image set {images.get('path', '?')} "
                f"({weights or PRETRAIN_MODEL})")
    if init == "none":
        return "random weights"
    return f"the checkpoint {init}"


def is_frame_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a ferseq frame network (``model.pt``: ``arch`` and ``state_dict``), not a backbone's
    state dict."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        return False
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file: the backbone loader names the problem
        return False
    return isinstance(checkpoint, dict) and "arch" in checkpoint and "state_dict" in checkpoint


def load_network(model: torch.nn.Module, path: str | Path, key: str = "frame_model.init") -> bool:
    """Start ``model`` (a :class:`ferseq.frame_model.network.FrameModel`) from the ferseq checkpoint ``path``: its
    backbone and FC layers, and its classifier when both have the same classes (in order). Returns whether the
    classifier was taken.

    The checkpoint must be of the same architecture (backbone, FC sizes): else :class:`ConfigError` naming
    ``key``, the file and what differs.
    """
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    theirs, mine = checkpoint["arch"], model.arch
    where = f"{key}: the checkpoint {str(path)!r}"
    for part in ("backbone", "fc"):
        if theirs[part] != mine[part]:
            raise ConfigError(f"{where} is a network with {part} {theirs[part]}, but frame_model.{part} is "
                              f"{mine[part]}: the weights cannot be carried over; use a checkpoint of the same "
                              f"architecture, or set frame_model.{part} to {theirs[part]}")
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

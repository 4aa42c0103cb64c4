"""Where a frame network starts: ``frame_model.init`` (``imagenet | pretrain | none | PATH``).

- ``imagenet``: timm's ImageNet weights of the backbone (the reference method), written once by the local rule
  ``pretrained_weights`` (``ferseq.frame_model.pretrained_weights``); the head starts random.
- ``pretrain``: the network the ``pretrain`` stage trained on a static expression image set
  (``results/pretrain/model.pt``, :mod:`ferseq.pretrain`): backbone and FC layers, and its classifier too when
  it was trained on the study's classes (``pretrain.classes.map``), else a new classifier.
- ``none``: random initialisation.
- ``PATH``: a data-only checkpoint file: a ferseq ``model.pt`` of the same architecture (e.g. a lab's own frame
  model; as ``pretrain``), or a backbone's state dict (timm/torchvision style, safetensors or
  ``torch.save``; as ``imagenet``).

``frame_model.pretrained`` (true / false / a path) is the older spelling of the same choice (``imagenet`` /
``none`` / PATH); a config gives either, or both agreeing. This module reads the choice from a config (no torch:
the DAG is planned with it); :mod:`ferseq.frame_model.initial_weights` loads the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ferseq.common.errors import ConfigError

CHOICES = ("imagenet", "pretrain", "none")
PRETRAIN_MODEL = "results/pretrain/model.pt"  # what rule pretrain writes


def from_pretrained(value: bool | str) -> str:
    """``frame_model.pretrained``'s value as an ``init`` choice."""
    if value is True:
        return "imagenet"
    return str(value) if value else "none"


def choice(config: Mapping[str, Any], section: str = "frame_model") -> str:
    """The ``init`` of ``section`` (``frame_model`` or ``pretrain``): ``imagenet``, ``pretrain``, ``none`` or a
    path. ``frame_model.init`` unset: from ``frame_model.pretrained``; neither set: ``imagenet``."""
    cfg = config.get(section) or {}
    init = cfg.get("init")
    if section != "frame_model":
        return str(init) if init else "imagenet"
    pretrained = cfg.get("pretrained")
    if pretrained is not None and init and from_pretrained(pretrained) != init:
        raise ConfigError(f"frame_model.init: {init!r} and frame_model.pretrained: {pretrained!r} say different "
                          "things; give only frame_model.init (pretrained is its older spelling: true is imagenet, "
                          "false is none)")
    if init:
        return str(init)
    return "imagenet" if pretrained is None else from_pretrained(pretrained)


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

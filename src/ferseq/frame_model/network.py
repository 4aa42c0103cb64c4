"""The per-frame CNN: a timm backbone, global average pooling, FC 1024-512-256, softmax over the classes.

The FC-512 output (``frame_model.embedding_layer``) is the frame embedding that
the feature store keeps for the sequence models. ``model.pt`` holds the best
epoch's ``state_dict`` and everything needed to rebuild the network without the
config (``arch``: backbone, classes, fc, dropout, embedding layer, input size,
normalisation) plus the class weights, best epoch and its validation metrics;
:func:`load_frame_model` reads it (as data only). Training is
:mod:`ferseq.frame_model.training`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ferseq.common import initialisation
from ferseq.common.errors import ConfigError
from ferseq.common.outputs import atomic_path
from ferseq.frame_model import initial_weights

log = logging.getLogger(__name__)

# The ``frame_model`` defaults of workflow/schemas/config.schema.yaml (a test keeps them equal),
# so that a partial config works outside Snakemake too.
DEFAULTS: dict[str, Any] = {
    "backbone": "legacy_xception", "pretrained": None, "init": None, "weights_dir": "results/weights", "input_size": 224, "fc": [1024, 512, 256],
    "embedding_layer": 1, "dropout": 0.5, "lr": 0.0001, "batch_size": 32, "epochs": 30, "patience": 5,
    "frame_stride": 1, "augment": True, "num_workers": 2, "inference_batch_size": 64, "shuffle_buffer": 4096,
}


# The backbone's memory format, on every device. On an H200 (bf16) channels_last runs legacy_xception about
# 2x as fast as the default layout; on the 2-core development CPU, at 96 px, the feature stage ran 1.8x as
# fast with it and a train step 1.15-1.45x (medians of paired runs): see CHANGELOG.md, 0.1.0.
MEMORY_FORMAT = torch.channels_last


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``frame_model`` section of a full config, defaults filled in."""
    return {**DEFAULTS, **config.get("frame_model", {})}


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(dev: torch.device):
    """bf16 mixed precision on CUDA; plain float32 on the CPU (bf16 there is slow on most CPUs)."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")


def create_backbone(name: str, pretrained: bool | str = False, key: str = "frame_model.init") -> nn.Module:
    """A timm model without its classifier, returning globally average-pooled features.

    ``pretrained``: False (random init), True (timm's weights: cached or downloaded)
    or the path of a checkpoint to load into the backbone (a classifier in it is ignored).
    ``key``: the config key that chose the weights, named by the errors.
    """
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"frame_model.backbone: {name!r} is not a timm model name (see timm.list_models())")
    if pretrained is True:
        try:
            return timm.create_model(name, pretrained=True, num_classes=0, global_pool="avg")
        except Exception as err:  # no internet, no cache, no weights for this name: all the user's to fix
            raise ConfigError(f"{key}: imagenet needs timm's weights for {name}, which could not be loaded "
                              f"({type(err).__name__}: {err}); use none or the path of a checkpoint file") from None
    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="avg")
    if pretrained:
        load_backbone_weights(model, Path(pretrained), key)
    return model


def load_backbone_weights(model: nn.Module, path: Path, key: str = "frame_model.init") -> None:
    """Load a checkpoint (timm/torchvision-style state dict, or a ferseq model.pt) into a headless backbone."""
    from timm.models import load_state_dict

    where = f"{key}: checkpoint {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist")
    try:
        state = load_state_dict(str(path))
    except Exception as err:
        raise ConfigError(f"{where} cannot be read as a PyTorch state dict ({type(err).__name__}: {err})") from None
    if any(key.startswith("backbone.") for key in state):
        # A ferseq model.pt (e.g. a model trained on other data): its backbone weights are under "backbone.".
        state = {key[len("backbone."):]: value for key, value in state.items() if key.startswith("backbone.")}
    head = model.pretrained_cfg.get("classifier", "fc")
    heads = (head,) if isinstance(head, str) else tuple(head)
    state = {key: value for key, value in state.items() if not key.startswith(tuple(h + "." for h in heads))}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that do not match
        raise ConfigError(f"{where} does not fit backbone {model.pretrained_cfg.get('architecture')}: {err}") from None
    if missing or unexpected:
        raise ConfigError(f"{where} does not fit backbone {model.pretrained_cfg.get('architecture')}: "
                          f"{len(missing)} weights missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                          f"(e.g. {unexpected[:3]})")
    log.info("backbone weights loaded from %s", path)


class FrameModel(nn.Module):
    """Backbone -> GAP features -> FC layers (ReLU, dropout) -> class logits.

    Inputs are uint8 RGB images (batch, 3, size, size); the model scales and
    normalises them with its backbone's mean and std. ``embed`` returns the
    output of ``fc[embedding_layer]`` after its ReLU (the frame embedding) and the logits.
    """

    def __init__(self, backbone: str, classes: Sequence[str], fc: Sequence[int] = (1024, 512, 256), dropout: float = 0.5,
                 embedding_layer: int = 1, input_size: int = 224, pretrained: bool | str = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 init_key: str = "frame_model.init"):
        super().__init__()
        if not 0 <= embedding_layer < len(fc):
            raise ConfigError(f"frame_model.embedding_layer: {embedding_layer} is not an index of frame_model.fc {list(fc)}")
        self.backbone = create_backbone(backbone, pretrained, init_key)
        cfg = self.backbone.pretrained_cfg
        self.arch = {"backbone": backbone, "classes": list(classes), "fc": [int(n) for n in fc], "dropout": float(dropout),
                     "embedding_layer": int(embedding_layer), "input_size": int(input_size),
                     "mean": [float(m) for m in (mean or cfg["mean"])], "std": [float(s) for s in (std or cfg["std"])]}
        self.register_buffer("mean", torch.tensor(self.arch["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.arch["std"]).view(1, 3, 1, 1), persistent=False)
        sizes = [self.backbone.num_features, *self.arch["fc"]]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(sizes[-1], len(classes))
        self.memory_format = torch.contiguous_format  # of the backbone's input; set by to_device

    @property
    def classes(self) -> list[str]:
        return self.arch["classes"]

    @property
    def input_size(self) -> int:
        return self.arch["input_size"]

    @property
    def embedding_dim(self) -> int:
        return self.arch["fc"][self.arch["embedding_layer"]]

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding (batch, fc[embedding_layer]), logits (batch, classes)) of uint8 RGB images."""
        # The layout change on the uint8 input moves 4x fewer bytes than on floats; the arithmetic keeps it.
        x = (images.contiguous(memory_format=self.memory_format).float() / 255.0 - self.mean) / self.std
        x = self.backbone(x)
        embedding = x
        for index, layer in enumerate(self.fc):
            x = F.relu(layer(x))
            if index == self.arch["embedding_layer"]:
                embedding = x
            x = self.dropout(x)
        return embedding, self.classifier(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)[1]


def to_device(model: FrameModel, dev: torch.device | str) -> FrameModel:
    """``model`` on ``dev``, its backbone (weights and input) in ``MEMORY_FORMAT`` (channels_last)."""
    model.memory_format = MEMORY_FORMAT
    return model.to(torch.device(dev), memory_format=MEMORY_FORMAT)


def build_model(config: Mapping[str, Any], weights: str | Path | None = None, section: str = "frame_model",
                classes: Sequence[str] | None = None) -> FrameModel:
    """The (untrained) frame network a full config describes, started as ``{section}.init`` says
    (:mod:`ferseq.frame_model.initial_weights`; ``section``: ``frame_model`` or ``pretrain``).

    ``weights``: the file that ``init`` resolved to (the workflow passes it: the ImageNet weights that the local
    rule pretrained_weights wrote, the pretraining's model or the checkpoint of a path): a ferseq checkpoint
    starts the whole network, anything else the backbone. ``classes``: the classifier's (default: the study's).
    """
    cfg = settings(config)
    key = f"{section}.init"
    init = initialisation.choice(config, section)
    if init == "pretrain" and not weights:
        raise ConfigError(f"{key}: pretrain needs the pretraining's model ({initialisation.PRETRAIN_MODEL}, "
                          "rule pretrain)")
    source = str(weights) if weights else init
    whole = initialisation.is_path(source) and initial_weights.is_frame_checkpoint(source)
    pretrained: bool | str = {"imagenet": True, "none": False}.get(source, False if whole else source)
    model = FrameModel(cfg["backbone"], classes or config["classes"]["names"], cfg["fc"], cfg["dropout"],
                       cfg["embedding_layer"], cfg["input_size"], pretrained, init_key=key)
    if whole:
        initial_weights.load_network(model, source, key)
    return model


def save_checkpoint(path: str | Path, model: FrameModel, state_dict: dict | None = None, **info: Any) -> None:
    """Write ``model.pt`` atomically: the weights (``state_dict`` or the model's own), ``arch`` and ``info``."""
    state = state_dict if state_dict is not None else model.state_dict()
    # contiguous: the file holds the default layout whatever the device trained in
    checkpoint = {"state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()}, "arch": model.arch, **info}
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a ``model.pt`` (weights on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no frame model checkpoint there (the frame_model rule writes it)")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_frame_model(path: str | Path, device: str | torch.device | None = None) -> FrameModel:
    """A trained frame model from ``model.pt``, in eval mode, on ``device`` (default: CUDA if available).

    Never downloads anything: the backbone is built empty and gets the saved weights.
    """
    checkpoint = read_checkpoint(path)
    model = FrameModel(**checkpoint["arch"], pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])
    return to_device(model, device or default_device()).eval()

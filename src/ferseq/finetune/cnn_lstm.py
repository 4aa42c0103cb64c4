"""The CNN-LSTM as one network: the fold's frame model embeds each frame of a window, its LSTM classifies the window.

``model.pt`` of the stage holds both parts as data (:mod:`ferseq.common.model_files`): ``frame_model`` in the
frame model's checkpoint layout (weights, ``arch``, the faces settings) and ``sequence_model`` in a grid point's
(weights, ``arch``, ``input_dim``, ``hidden``, ``dropout``, classes, window length, features), beside the
training's metrics and history. :func:`load` rebuilds both without the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferseq.common import model_files
from ferseq.common.outputs import atomic_path
from ferseq.frame_model.network import FrameModel, autocast, default_device, to_device
from ferseq.sequence_model import classifier


class CnnLstm(nn.Module):
    """uint8 windows of crops (batch, length, 3, size, size) -> class logits (batch, classes)."""

    def __init__(self, frame: FrameModel, sequence: classifier.SequenceClassifier):
        super().__init__()
        self.frame, self.sequence = frame, sequence

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        batch, length = windows.shape[:2]
        with autocast(windows.device):  # bf16 on CUDA for the CNN, as its own training runs it
            embedding, _ = self.frame.embed(windows.flatten(0, 1))
        # the LSTM in float32, as the grid trained it
        return self.sequence(embedding.float().view(batch, length, -1))

    def param_groups(self, lr: float, backbone_lr: float) -> list[dict[str, Any]]:
        """Adam's groups: the backbone at ``backbone_lr``; the FC layers up to the embedding and the sequence
        model at ``lr``. The frame model's layers after the embedding get no gradient and are left out."""
        fc = self.frame.fc[: self.frame.arch["embedding_layer"] + 1]
        return [{"params": list(self.frame.backbone.parameters()), "lr": backbone_lr},
                {"params": [*fc.parameters(), *self.sequence.parameters()], "lr": lr}]


def sequence_info(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What rebuilds a grid point's network (of its checkpoint, :func:`ferseq.sequence_model.grid_search.load_model`)."""
    return {**{k: checkpoint[k] for k in ("arch", "input_dim", "hidden", "dropout", "classes", "window_length")},
            "features": checkpoint.get("features", "embedding"), "normalise": checkpoint.get("normalise", "none")}


def save(path: str | Path, model: CnnLstm, state_dict: dict[str, torch.Tensor], frame_info: dict[str, Any],
         sequence: dict[str, Any], **info: Any) -> None:
    """Write the stage's ``model.pt`` atomically: the weights ``state_dict`` (of ``model``) split into its two parts.

    ``frame_info``: the frame model checkpoint's entries besides its weights (``arch``, ``faces``, ...);
    ``sequence``: :func:`sequence_info` of the grid point it started from; ``info``: plain values (metrics).
    """
    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v.detach().cpu().contiguous() for k, v in state_dict.items() if k.startswith(prefix)}

    checkpoint = {"frame_model": {"state_dict": part("frame."), **model_files.plain(frame_info)},
                  "sequence_model": {"state_dict": part("sequence."), **model_files.plain(sequence)},
                  **model_files.plain(info)}
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load(path: str | Path, device: str | torch.device | None = None) -> tuple[CnnLstm, dict[str, Any]]:
    """A fine-tuned CNN-LSTM from the stage's ``model.pt``, in eval mode on ``device`` (default: CUDA if available),
    with the file's contents; read as data only."""
    checkpoint = model_files.read_torch(path, "fine-tuned CNN-LSTM")
    try:
        frame_part, seq = checkpoint["frame_model"], checkpoint["sequence_model"]
        frame = FrameModel(**frame_part["arch"], pretrained=False)
        frame.load_state_dict(frame_part["state_dict"])
        sequence = classifier.SequenceClassifier(seq["arch"], seq["input_dim"], seq["hidden"], len(seq["classes"]),
                                                 seq["dropout"], window_length=seq["window_length"])
        sequence.load_state_dict(seq["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise model_files.ModelFileError(f"{path}: not a ferseq fine-tuned CNN-LSTM ({type(err).__name__}: "
                                         f"{str(err)[:200]})") from None
    model = CnnLstm(frame, sequence)
    dev = torch.device(device or default_device())
    to_device(frame, dev)
    return model.to(dev).eval(), checkpoint

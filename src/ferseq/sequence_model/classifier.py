"""Many-to-one LSTM classifiers over windows of frame embeddings, and their training loop.

Architectures (the reference's): ``lstm`` (one layer), ``lstm2`` (two stacked
layers, dropout between them) and ``bilstm`` (one bidirectional layer). Each
ends with dropout and a linear layer to the classes; softmax at inference.

Training is one explicit loop: weighted cross entropy (weights from the train
window counts), Adam, early stopping once the validation loss has not improved
for ``patience`` epochs, and the best epoch's weights kept.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

log = logging.getLogger(__name__)

ARCHITECTURES = {  # name -> (layers, bidirectional)
    "lstm": (1, False),
    "lstm2": (2, False),
    "bilstm": (1, True),
}


class SequenceClassifier(nn.Module):
    """LSTM over a window (batch, time, features) -> class logits from the last hidden state."""

    def __init__(self, arch: str, input_dim: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"sequence_model.architectures: unknown {arch!r}; one of {sorted(ARCHITECTURES)}")
        layers, bidirectional = ARCHITECTURES[arch]
        self.bidirectional = bidirectional
        # nn.LSTM applies its dropout between stacked layers only, which is what lstm2 wants.
        self.lstm = nn.LSTM(input_dim, hidden, num_layers=layers, batch_first=True,
                            bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)
        # h: (layers * directions, batch, hidden); the top layer's final state summarises the window.
        last = torch.cat([h[-2], h[-1]], dim=1) if self.bidirectional else h[-1]
        return self.head(self.dropout(last))


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 over the classes present; a class absent from train gets 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class TrainResult:
    """What training a grid point gives: the best epoch's weights and the history."""

    state_dict: dict
    best_epoch: int
    val_loss: float
    val_macro_f1: float
    history: list[dict] = field(default_factory=list)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module, batch_size: int = 256) -> tuple[float, np.ndarray]:
    """Mean loss and predicted classes of ``model`` on ``(x, y)``."""
    model.eval()
    losses, preds = [], []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size])
            losses.append(criterion(logits, y[i:i + batch_size]).item() * len(logits))
            preds.append(logits.argmax(dim=1).numpy())
    return sum(losses) / max(len(x), 1), np.concatenate(preds) if preds else np.empty(0, dtype=np.int64)


def train(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, *, arch: str, lr: float,
          hidden: int, dropout: float, num_classes: int, epochs: int, patience: int, batch_size: int, seed: int,
          on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train one grid point; ``on_epoch`` receives each epoch's metrics (for logging)."""
    if len(val_x) == 0:
        raise ValueError("no validation windows: early stopping needs a val split with windows (see windows counts)")
    # data
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    xs, ys = torch.tensor(train_x, dtype=torch.float32), torch.tensor(train_y, dtype=torch.long)
    vx, vy = torch.tensor(val_x, dtype=torch.float32), torch.tensor(val_y, dtype=torch.long)
    # model, loss, optimiser
    model = SequenceClassifier(arch, train_x.shape[2], hidden, num_classes, dropout)
    criterion = nn.CrossEntropyLoss(weight=class_weights(train_y, num_classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best = TrainResult({k: v.clone() for k, v in model.state_dict().items()}, 0, math.inf, 0.0)
    stale = 0
    # epoch loop with early stopping on the validation loss
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(xs), generator=generator)
        total = 0.0
        for i in range(0, len(xs), batch_size):
            batch = order[i:i + batch_size]
            loss = criterion(model(xs[batch]), ys[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        val_loss, val_pred = evaluate(model, vx, vy, criterion)
        val_f1 = f1_score(val_y, val_pred, labels=np.unique(val_y), average="macro", zero_division=0)
        metrics = {"epoch": epoch, "train_loss": total / len(xs), "val_loss": val_loss, "val_macro_f1": float(val_f1),
                   "seconds": time.perf_counter() - start}
        best.history.append(metrics)
        if on_epoch:
            on_epoch(metrics)
        if val_loss < best.val_loss:
            best.state_dict = {k: v.clone() for k, v in model.state_dict().items()}
            best.best_epoch, best.val_loss, best.val_macro_f1 = epoch, val_loss, float(val_f1)
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                log.info("early stop at epoch %d: val loss has not improved for %d epochs (best epoch %d)", epoch, patience, best.best_epoch)
                break
    return best

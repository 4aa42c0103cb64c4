"""Many-to-one sequence classifiers over windows of frame embeddings, and their training loop.

Architectures: the reference's ``lstm`` (one layer), ``lstm2`` (two stacked
layers, dropout between them) and ``bilstm`` (one bidirectional layer); ``gru``
(one GRU layer); ``transformer``, a small temporal transformer encoder in the
manner of Former-DFER's temporal transformer (:class:`TemporalEncoder`). Each
reduces a window to one vector (a recurrent model's last hidden state, the
transformer's mean over time), then dropout and a linear layer to the classes;
softmax at inference.

Training is one explicit loop: weighted cross entropy (weights from the train
window counts), Adam, early stopping once the validation loss has not improved
for ``patience`` epochs, and the best epoch's weights kept.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from ferseq.common.config import TRANSFORMER_HEADS

log = logging.getLogger(__name__)


class Architecture(NamedTuple):
    """What an entry of ``sequence_model.architectures`` builds."""

    kind: str  # lstm, gru or transformer
    layers: int
    bidirectional: bool


TRANSFORMER_LAYERS = 2
ARCHITECTURES = {
    "lstm": Architecture("lstm", 1, False),
    "lstm2": Architecture("lstm", 2, False),
    "bilstm": Architecture("lstm", 1, True),
    "gru": Architecture("gru", 1, False),
    "transformer": Architecture("transformer", TRANSFORMER_LAYERS, False),
}


class EncoderLayer(nn.Module):
    """One pre-norm transformer encoder layer over (batch, time, width): self-attention, then a feed-forward
    block (2 x width, GELU), each added to its input after a LayerNorm of that input.

    Written out (rather than nn.TransformerEncoderLayer) so that its weights can be stacked over grid points
    and run through ``torch.func.vmap`` (:mod:`ferseq.sequence_model.fused_training`)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        # No bias on queries, keys, values: a key bias shifts all of a query's scores alike, which softmax
        # ignores, so its gradient would be rounding noise that Adam scales up to full steps (the LayerNorm's
        # shift before still reaches all three).
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ff1 = nn.Linear(width, 2 * width)
        self.ff2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, steps, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(width // self.heads), dim=-1) @ v
        x = x + self.out(attended.transpose(1, 2).reshape(batch, steps, width))
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


class TemporalEncoder(nn.Module):
    """A window (batch, time, features) -> one vector (batch, width): a linear projection of each frame to
    ``width``, plus a learned embedding of its position in the window (one per position, ``window_length`` of
    them), :data:`TRANSFORMER_LAYERS` pre-norm encoder layers of :data:`~ferseq.common.config.TRANSFORMER_HEADS`
    heads, a final LayerNorm and the mean over time (every frame counts alike, as in frame aggregation)."""

    def __init__(self, input_dim: int, width: int, window_length: int, layers: int = TRANSFORMER_LAYERS,
                 heads: int = TRANSFORMER_HEADS):
        super().__init__()
        if width % heads:
            raise ValueError(f"sequence_model.hidden: {width} is not divisible by the transformer's {heads} heads")
        self.project = nn.Linear(input_dim, width)
        self.position = nn.Parameter(torch.randn(window_length, width) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, positions = x.shape[1], self.position.shape[0]
        if steps > positions:
            raise ValueError(f"transformer sequence model: a window of {steps} frames is longer than the {positions} "
                             f"positions it was built for (window_length {positions} in its checkpoint); give it "
                             f"windows of at most {positions} frames")
        x = self.project(x) + self.position[:steps]
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).mean(dim=1)


class SequenceClassifier(nn.Module):
    """A window (batch, time, features) -> class logits: the architecture's summary of the window
    (:meth:`encode`), dropout, a linear layer.

    ``dropout`` is the grid's: before the linear layer for every architecture, and also between the
    stacked layers of ``lstm2`` (nn.LSTM's dropout). The transformer has none inside its encoder layers:
    the grid's rates (0.4-0.8) on every residual branch would leave it little to learn from; as for the
    LSTMs, dropout regularises what the classifier reads. ``window_length``: the longest window the
    transformer takes (its position table; the recurrent models take any length).
    """

    def __init__(self, arch: str, input_dim: int, hidden: int, num_classes: int, dropout: float,
                 window_length: int | None = None):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"sequence_model.architectures: unknown {arch!r}; one of {sorted(ARCHITECTURES)}")
        self.kind, layers, self.bidirectional = ARCHITECTURES[arch]
        if self.kind == "lstm":
            # nn.LSTM applies its dropout between stacked layers only, which is what lstm2 wants.
            self.lstm = nn.LSTM(input_dim, hidden, num_layers=layers, batch_first=True,
                                bidirectional=self.bidirectional, dropout=dropout if layers > 1 else 0.0)
        elif self.kind == "gru":
            self.gru = nn.GRU(input_dim, hidden, batch_first=True)
        else:
            if window_length is None:
                raise ValueError("the transformer sequence model needs window_length (its position table)")
            self.encoder = TemporalEncoder(input_dim, hidden, window_length, layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if self.bidirectional else 1), num_classes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The window's summary (batch, width) that the linear layer reads (before dropout)."""
        if self.kind == "transformer":
            return self.encoder(x)
        _, h = self.lstm(x) if self.kind == "lstm" else self.gru(x)
        h = h[0] if self.kind == "lstm" else h  # (h, c) for an LSTM
        # h: (layers * directions, batch, hidden); the top layer's final state summarises the window.
        return torch.cat([h[-2], h[-1]], dim=1) if self.bidirectional else h[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encode(x)))


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
    model = SequenceClassifier(arch, train_x.shape[2], hidden, num_classes, dropout, window_length=train_x.shape[1])
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

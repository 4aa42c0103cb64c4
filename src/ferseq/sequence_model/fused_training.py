"""Train the grid points of one architecture and hidden size together, one fused computation per batch.

Every point is a :class:`~ferseq.sequence_model.classifier.SequenceClassifier` of the same
shape; here its weights are one slice of stacked tensors (points first, under
the names of the classifier's state dict), so a batch of windows goes through
all points at once. Recurrent models (LSTMs, GRU): the first layer's input
projection of every point and direction is one matrix product, each time step
of the recurrence one batched matrix product over points (and directions), with
the backward pass through time written out (:class:`LSTMRecurrence`,
:class:`GRURecurrence`), the second layer's input projection and the output
layer one batched product each. The transformer: its encoder is the
classifier's own module, run over the stacked weights by ``torch.func.vmap``
(each of its matrix products one batched product over the points); on the CPU
(one thread, batches of 32 windows of 16 x 512, width 64) a train step of 25
points took 319 ms against 460 ms for the points one after another, and 5
points of width 256 took the same time either way (a busy machine, 2026-12-01).

Each point keeps its own learning rate (its Adam parameter group), dropout
(its own masks), initialisation (a classifier built under its seed, copied into
the stack), early stopping (patience on its own val loss) and best epoch. A
point that stops leaves the stack: it no longer changes and no longer costs time. The points share the order of the batches.

Equivalence with :func:`ferseq.sequence_model.classifier.train`: on the CPU a point trained
here follows the same arithmetic as the point trained alone with the same seed
and batch order. Its dropout masks come from its own generator, which continues
where its initialisation left the random stream, drawn in the order and shape
nn.LSTM and nn.Dropout draw them; its weights are its own tensors, updated by
torch's Adam with its learning rate. Only float rounding differs (batched
products instead of the oneDNN LSTM and GRU kernels, or of one model's products). On a GPU (``exact=False``) the
masks of all points are drawn at once on the device and Adam is torch's fused
kernel: the same distributions and arithmetic, not the same draws, and far
fewer kernel launches.

How many points form one computation (a :class:`Stack`): on a GPU all of a
job's points; on the CPU a few (:data:`CPU_STACK_PARAMETERS`): there the work is
bound by arithmetic, not by launching operations, and a large stack's tensors
no longer fit in the cache, so each batch goes through a few small stacks. A
stack of one point on the CPU (a large model, or the last point of a stack)
runs the point's SequenceClassifier with its weights: torch's own LSTM and GRU
kernels are faster there than the stacked steps for a single model.

Resume: :func:`train_points` hands ``on_epoch_end`` a function that returns the
whole training state of every point (weights, Adam, dropout streams, best
weights, early-stopping counters, histories, the batch-order generator), as
tensors and plain values; given back as ``resume_from``, training continues
after that epoch as if it had never stopped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ferseq.common import resume
from ferseq.sequence_model.classifier import ARCHITECTURES, SequenceClassifier, TrainResult, class_weights

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
# torch.optim.Adam's defaults, which sequence_model.train uses.


@dataclass(frozen=True)
class Point:
    """What differs between the grid points of one job."""

    lr: float
    dropout: float
    seed: int


def choose_device(setting: str) -> torch.device:
    """The device for ``sequence_model.device``: ``cpu``, ``cuda`` (must exist) or ``auto`` (CUDA if this process sees one)."""
    if setting not in DEVICES:
        raise ValueError(f"sequence_model.device: {setting!r} is not one of {list(DEVICES)}")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("sequence_model.device is 'cuda' but this job sees no CUDA device "
                         "(set it to 'auto' or 'cpu', or run the job where a GPU is allocated)")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def init_point(arch: str, input_dim: int, hidden: int, num_classes: int, point: Point,
               window_length: int) -> tuple[dict, torch.Generator]:
    """A point's initial weights, exactly as ``sequence_model.train`` draws them under its seed, and a CPU
    generator that continues that random stream (the point's dropout masks, as nn.Dropout would draw them)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(point.seed)
        state = SequenceClassifier(arch, input_dim, hidden, num_classes, point.dropout, window_length).state_dict()
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
    return state, generator


class Dropout:
    """Each point's dropout on stacked activations ``(points, ...)``; ``eval()``-like when ``training`` is off.

    With ``generators`` (exact, the CPU default): point p's mask is drawn from its own generator in
    the shape of its slice, as nn.Dropout / nn.LSTM would draw it for the point alone; a point with
    dropout 0 draws nothing, as there. Without (the GPU default): one draw on the device for all points.
    """

    def __init__(self, probs: Sequence[float], generators: list[torch.Generator] | None, device: torch.device, seed: int):
        self.probs = list(probs)
        self.generators = generators
        self.training = True
        self._keep = torch.tensor([1.0 - p for p in self.probs], device=device)
        self._device_generator = None if generators else torch.Generator(device=device).manual_seed(seed)

    def select(self, index: list[int]) -> None:
        """Keep only the points at ``index`` (the others have stopped)."""
        self.probs = [self.probs[i] for i in index]
        self._keep = self._keep[index]
        if self.generators:
            self.generators = [self.generators[i] for i in index]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x * mask`` for stacked activations ``x`` (P, ...); each point's slice is laid out as the
        tensor nn.Dropout / nn.LSTM draws its mask for (e.g. time-major between LSTM layers)."""
        if not self.training or not any(self.probs):
            return x
        if self.generators is None:
            keep = self._keep.view(-1, *[1] * (x.dim() - 1))
            mask = torch.empty_like(x).bernoulli_(keep.expand_as(x), generator=self._device_generator)
            return x * mask.div_(keep)
        masks = []
        for slice_, p, generator in zip(x, self.probs, self.generators):
            if p == 0:  # nn.Dropout(0) draws nothing
                masks.append(torch.ones_like(slice_))
                continue
            # nn.Dropout on the CPU: empty_like(input).bernoulli_(1 - p), divided by 1 - p.
            masks.append(torch.empty(slice_.shape, dtype=x.dtype).bernoulli_(1 - p, generator=generator).div_(1 - p))
        return x * torch.stack(masks).to(x.device)


class LSTMRecurrence(torch.autograd.Function):
    """G stacked LSTM layers run over time, with their backward pass written out (backpropagation through time).

    Input ``gx`` (T, G, B, 4H): each step's input projection plus both biases, time-major;
    ``w_hh`` (G, 4H, H); ``training``: keep what the backward pass needs. Output: every step's
    hidden state (T, G, B, H) and the last one (G, B, H).
    Written out rather than left to autograd because autograd, step by step, would compute the
    recurrent weights' gradient as T thin products (inner size = batch) and zero-fill a full-size
    gradient for every time slice; here it is one batched product over all steps, as cuDNN and
    oneDNN do it.
    """

    @staticmethod
    def forward(ctx, gx: torch.Tensor, w_hh: torch.Tensor, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        steps, groups, batch, width = gx.shape
        hidden = width // 4
        g_gate = slice(2 * hidden, 3 * hidden)
        hs = gx.new_zeros(steps + 1, groups, batch, hidden)  # h_0 = 0, then h_1 .. h_T
        cs = gx.new_zeros(steps + 1, groups, batch, hidden)
        acts = torch.empty_like(gx)  # the gates after their nonlinearity: i, f, g, o (nn.LSTM's order)
        tanh_cs = gx.new_empty(steps, groups, batch, hidden)
        w = w_hh.transpose(1, 2)
        for t in range(steps):
            pre = torch.baddbmm(gx[t], hs[t], w)
            torch.sigmoid(pre, out=acts[t])
            torch.tanh(pre[..., g_gate], out=acts[t, ..., g_gate])
            i, f, g, o = acts[t].chunk(4, dim=2)
            torch.addcmul(f * cs[t], i, g, out=cs[t + 1])
            torch.tanh(cs[t + 1], out=tanh_cs[t])
            torch.mul(o, tanh_cs[t], out=hs[t + 1])
        if training:  # (grad mode is always off in here, so the caller says)
            # each gate's derivative through its nonlinearity, for the backward pass:
            # s (1 - s) for the sigmoid gates i, f, o and 1 - g^2 for the tanh gate g
            slopes = acts * (1 - acts)
            torch.addcmul(torch.ones_like(acts[..., g_gate]), acts[..., g_gate], acts[..., g_gate], value=-1,
                          out=slopes[..., g_gate])
            ctx.save_for_backward(w_hh, hs, cs, acts, tanh_cs, slopes)
        ctx.set_materialize_grads(False)
        return hs[1:], hs[-1].clone()

    @staticmethod
    def backward(ctx, grad_outputs: torch.Tensor | None, grad_last: torch.Tensor | None):
        w_hh, hs, cs, acts, tanh_cs, slopes = ctx.saved_tensors
        steps, groups, batch, width = acts.shape
        hidden = width // 4
        dgates = torch.empty_like(acts)  # gradient of each step's pre-activations, i.e. of gx
        dh = torch.zeros_like(hs[0]) if grad_last is None else grad_last.clone()
        dc = torch.zeros_like(cs[0])
        for t in reversed(range(steps)):
            if grad_outputs is not None:
                dh += grad_outputs[t]
            i, f, g, o = acts[t].chunk(4, dim=2)
            # h_t = o * tanh(c_t): into c_t (added to what c_(t+1) sends back) and into o
            dc.addcmul_(dh * o, torch.addcmul(torch.ones_like(dc), tanh_cs[t], tanh_cs[t], value=-1))
            di, df, dg, do = dgates[t].chunk(4, dim=2)
            # c_t = f * c_(t-1) + i * g: into i, f, g
            torch.mul(dc, g, out=di)
            torch.mul(dc, cs[t], out=df)
            torch.mul(dc, i, out=dg)
            torch.mul(dh, tanh_cs[t], out=do)
            dgates[t].mul_(slopes[t])  # back through the gates' nonlinearities
            dc = dc * f
            dh = torch.bmm(dgates[t], w_hh)
        # the recurrent weights' gradient: sum over steps of dgates_t^T h_(t-1), as one product
        grad_w = torch.bmm(dgates.transpose(0, 1).reshape(groups, steps * batch, width).transpose(1, 2),
                           hs[:-1].transpose(0, 1).reshape(groups, steps * batch, hidden))
        return dgates, grad_w, None


class GRURecurrence(torch.autograd.Function):
    """G stacked GRU layers run over time (nn.GRU's equations), with their backward pass written out, as
    :class:`LSTMRecurrence` and for the same reason.

    Input ``gx`` (T, G, B, 3H): each step's input projection plus its bias b_ih, gates r, z, n (nn.GRU's
    order), time-major; ``w_hh`` (G, 3H, H) and ``b_hh`` (G, 3H), kept apart from ``gx`` because the reset
    gate multiplies the candidate's recurrent part, its bias included: n = tanh(gx_n + r (W_hn h + b_hn)),
    h' = (1 - z) n + z h. Output: every step's hidden state (T, G, B, H) and the last one (G, B, H).
    """

    @staticmethod
    def forward(ctx, gx: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor,
                training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        steps, groups, batch, width = gx.shape
        hidden = width // 3
        rz, n_gate = slice(0, 2 * hidden), slice(2 * hidden, 3 * hidden)
        hs = gx.new_zeros(steps + 1, groups, batch, hidden)  # h_0 = 0, then h_1 .. h_T
        acts = torch.empty_like(gx)  # the gates after their nonlinearity: r, z, n
        ghn = gx.new_empty(steps, groups, batch, hidden)  # the candidate's recurrent part W_hn h + b_hn
        w, bias = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
        for t in range(steps):
            gh = torch.baddbmm(bias, hs[t], w)
            torch.sigmoid(gx[t, ..., rz] + gh[..., rz], out=acts[t, ..., rz])
            r, z = acts[t, ..., :hidden], acts[t, ..., hidden:rz.stop]
            ghn[t] = gh[..., n_gate]
            n = torch.tanh(torch.addcmul(gx[t, ..., n_gate], r, ghn[t]), out=acts[t, ..., n_gate])
            torch.addcmul(n, z, hs[t] - n, out=hs[t + 1])  # (1 - z) n + z h = n + z (h - n)
        if training:  # (grad mode is always off in here, so the caller says)
            ctx.save_for_backward(w_hh, hs, acts, ghn)
        ctx.set_materialize_grads(False)
        return hs[1:], hs[-1].clone()

    @staticmethod
    def backward(ctx, grad_outputs: torch.Tensor | None, grad_last: torch.Tensor | None):
        w_hh, hs, acts, ghn = ctx.saved_tensors
        steps, groups, batch, width = acts.shape
        hidden = width // 3
        dgx = torch.empty_like(acts)  # gradient of gx: the gates' pre-activations, input part
        dgh = torch.empty_like(acts)  # and of the recurrent part W_hh h + b_hh
        dh = torch.zeros_like(hs[0]) if grad_last is None else grad_last.clone()
        for t in reversed(range(steps)):
            if grad_outputs is not None:
                dh += grad_outputs[t]
            r, z, n = acts[t].chunk(3, dim=2)
            dr, dz, dn = dgx[t].chunk(3, dim=2)
            # h_t = n + z (h_(t-1) - n): into n and z, then back through tanh and the sigmoid
            torch.mul(dh, 1 - z, out=dn).mul_(1 - n * n)
            torch.mul(dh, hs[t] - n, out=dz).mul_(z * (1 - z))
            # n's pre-activation = gx_n + r * ghn: into r (through its sigmoid) and into ghn
            torch.mul(dn, ghn[t], out=dr).mul_(r * (1 - r))
            dgh[t, ..., :2 * hidden] = dgx[t, ..., :2 * hidden]
            torch.mul(dn, r, out=dgh[t, ..., 2 * hidden:])
            dh = torch.baddbmm(dh * z, dgh[t], w_hh)
        # the recurrent weights' gradient: sum over steps of dgh_t^T h_(t-1), as one product; the bias's: the sum
        grad_w = torch.bmm(dgh.transpose(0, 1).reshape(groups, steps * batch, width).transpose(1, 2),
                           hs[:-1].transpose(0, 1).reshape(groups, steps * batch, hidden))
        return dgx, grad_w, dgh.sum(dim=(0, 2)), None


def _project_shared(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Input projection (T, P, B, G) of time-major windows ``x`` (T, B, D) read by every point: one matrix product."""
    steps, batch, dim = x.shape
    points, width, _ = w_ih.shape
    gx = torch.addmm(bias.reshape(points * width), x.reshape(steps * batch, dim), w_ih.reshape(points * width, dim).T)
    return gx.view(steps, batch, points, width).transpose(1, 2).contiguous()


def _project_own(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Input projection (T, P, B, 4H) of each point's own inputs ``x`` (T, P, B, H): one batched product."""
    steps, points, batch, dim = x.shape
    gx = torch.baddbmm(bias.unsqueeze(1), x.transpose(0, 1).reshape(points, steps * batch, dim), w_ih.transpose(1, 2))
    return gx.view(points, steps, batch, -1).transpose(0, 1).contiguous()


def _head(params: dict[str, torch.Tensor], summaries: torch.Tensor) -> torch.Tensor:
    """Every point's output layer (P, B, C) on its window summaries (P, B, W), dropout already applied."""
    return torch.baddbmm(params["head.bias"].unsqueeze(1), summaries, params["head.weight"].transpose(1, 2))


def recurrent_forward(params: dict[str, torch.Tensor], x: torch.Tensor, arch: str, dropout: Dropout) -> torch.Tensor:
    """Logits (P, B, C) of every stacked LSTM or GRU point for one batch of windows ``x`` (B, T, D)."""
    kind, layers, bidirectional = ARCHITECTURES[arch]
    points = params["head.weight"].shape[0]
    x = x.transpose(0, 1)  # time-major (T, B, D)
    grad = torch.is_grad_enabled()
    if kind == "gru":  # one layer; b_hh stays in the recurrence (see GRURecurrence)
        gx = _project_shared(x, params["gru.weight_ih_l0"], params["gru.bias_ih_l0"])
        _, h = GRURecurrence.apply(gx, params["gru.weight_hh_l0"], params["gru.bias_hh_l0"], grad)
        return _head(params, dropout(h))

    def weights(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return params[f"lstm.weight_ih_{name}"], params[f"lstm.bias_ih_{name}"] + params[f"lstm.bias_hh_{name}"]

    # Layer 0 reads the same windows for every point: one matrix product for all of them (per direction).
    gx = _project_shared(x, *weights("l0"))
    w_hh = params["lstm.weight_hh_l0"]
    if bidirectional:  # the reverse direction reads the window backwards; it runs beside the forward one
        gx = torch.cat([gx, _project_shared(x.flip(0), *weights("l0_reverse"))], dim=1)  # (T, 2P, B, 4H)
        w_hh = torch.cat([w_hh, params["lstm.weight_hh_l0_reverse"]])
    outputs, h = LSTMRecurrence.apply(gx, w_hh, grad)
    if layers > 1:  # lstm2: dropout on the first layer's outputs (drawn time-major, as nn.LSTM), then layer 1
        seq = dropout(outputs.transpose(0, 1)).transpose(0, 1)  # (T, P, B, H)
        _, h = LSTMRecurrence.apply(_project_own(seq, *weights("l1")), params["lstm.weight_hh_l1"], grad)
    last = torch.cat([h[:points], h[points:]], dim=2) if bidirectional else h  # (P, B, H or 2H)
    return _head(params, dropout(last))


def transformer_forward(model: SequenceClassifier, params: dict[str, torch.Tensor], x: torch.Tensor,
                        dropout: Dropout) -> torch.Tensor:
    """Logits (P, B, C) of every stacked transformer point for one batch of windows ``x`` (B, T, D): the
    classifier's own encoder (``model.encoder``, its weights unused) over each point's stacked weights."""
    encoder = {name.removeprefix("encoder."): w for name, w in params.items() if name.startswith("encoder.")}
    summaries = torch.func.vmap(lambda weights: torch.func.functional_call(model.encoder, weights, (x,)))(encoder)
    return _head(params, dropout(summaries))


def macro_f1(y: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Each row of ``preds`` (P, N): its macro F1 against ``y`` over the classes present in ``y``.

    sklearn's ``f1_score(y, row, labels=np.unique(y), average="macro", zero_division=0)`` (the
    reference's), computed the same way, for all points at once: 2 tp / (true + predicted) per class.
    """
    labels = np.unique(y)
    true = np.array([(y == label).sum() for label in labels], dtype=np.float64)
    hits = preds == y
    tp = np.stack([(hits & (y == label)).sum(axis=1) for label in labels], axis=1).astype(np.float64)
    predicted = np.stack([(preds == label).sum(axis=1) for label in labels], axis=1).astype(np.float64)
    return (2.0 * tp / (true + predicted)).mean(axis=1)


def point_losses(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each point's weighted cross entropy (P,), as nn.CrossEntropyLoss(weight=weights) gives it."""
    points, batch, classes = logits.shape
    nll = F.cross_entropy(logits.reshape(points * batch, classes), y.repeat(points), weight=weights,
                          reduction="none").view(points, batch)
    return nll.sum(dim=1) / weights[y].sum()


# On the CPU a stack holds about this many parameters (8 MB of float32) or fewer: its weights,
# gradients, Adam state and activations then stay in the cache through a step, where larger
# stacks ran slower per point than training the points one by one (see benchmarks/sequence_grid.py).
CPU_STACK_PARAMETERS = 2_000_000


def parameters_per_point(arch: str, input_dim: int, hidden: int, num_classes: int, window_length: int = 16) -> int:
    """The number of weights of one SequenceClassifier (built on the meta device: no memory, no random draws)."""
    with torch.device("meta"):
        model = SequenceClassifier(arch, input_dim, hidden, num_classes, 0.0, window_length)
    return sum(w.numel() for w in model.parameters())


def default_stack_size(arch: str, input_dim: int, hidden: int, num_classes: int, points: int,
                       device: torch.device, window_length: int = 16) -> int:
    """Points per fused computation: all of them on a GPU; on the CPU as many as fit :data:`CPU_STACK_PARAMETERS`."""
    if device.type != "cpu":
        return max(1, points)
    per_point = parameters_per_point(arch, input_dim, hidden, num_classes, window_length)
    return max(1, min(points, CPU_STACK_PARAMETERS // per_point))


class Stack:
    """Points trained as one fused computation: their weights, Adam, dropout and best weights.

    Each point's weights are its own tensors (named as a SequenceClassifier's state dict); every
    step stacks them (points first) for the fused computation, and torch's Adam updates them,
    one parameter group per learning rate. ``index``: the job's numbers of the points still in
    the stack, in stack order.
    """

    def __init__(self, arch: str, shape: tuple[int, int, int, int], index: list[int], states: list[dict],
                 generators: list[torch.Generator] | None, points: list[Point], device: torch.device, seed: int):
        """``shape``: the points' (input_dim, hidden, num_classes, window_length); ``generators``: each point's
        dropout stream (exact, as alone: the CPU), or None: one draw on the device."""
        self.arch, self.shape, self.index, self.exact = arch, shape, list(index), generators is not None
        self.lrs = [p.lr for p in points]
        self.weights = [{name: w.to(device).requires_grad_() for name, w in state.items()} for state in states]
        self.best = {i: {name: w.detach().clone() for name, w in weights.items()} for i, weights in zip(index, self.weights)}
        self.dropout = Dropout([p.dropout for p in points], generators, device, seed)
        self.optimizer = self._adam()
        input_dim, hidden, num_classes, window_length = shape
        with torch.random.fork_rng(devices=[]):  # the shape of a point: its own initial weights are never used
            self.model = SequenceClassifier(arch, input_dim, hidden, num_classes, 0.0, window_length).to(device)

    def _adam(self, previous: torch.optim.Adam | None = None) -> torch.optim.Adam:
        """torch's Adam over the points' weights, a group per learning rate; ``previous``'s state carried over.

        Exact (the CPU): torch's default per-tensor loop, the reference's arithmetic to the bit.
        Else (a GPU): the fused kernel, a few launches per step instead of one per operation and tensor.
        """
        groups: dict[float, list[torch.Tensor]] = {}
        for lr, weights in zip(self.lrs, self.weights):
            groups.setdefault(lr, []).extend(weights.values())
        optimizer = torch.optim.Adam([{"params": params, "lr": lr} for lr, params in groups.items()],
                                     **({"foreach": False} if self.exact else {"fused": True}))
        if previous is not None:
            for params in groups.values():
                for p in params:
                    optimizer.state[p] = previous.state[p]
        return optimizer

    def stacked(self) -> dict[str, torch.Tensor]:
        """The points' weights stacked (P, ...) by name; gradients flow back to each point's own tensors."""
        return {name: torch.stack([w[name] for w in self.weights]) for name in self.weights[0]}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every point's logits (P, B, C) for the windows ``x`` (B, T, D)."""
        if len(self.weights) > 1 or x.device.type != "cpu":
            if self.model.kind == "transformer":
                return transformer_forward(self.model, self.stacked(), x, self.dropout)
            return recurrent_forward(self.stacked(), x, self.arch, self.dropout)
        # One point on the CPU: the classifier itself with the point's weights (torch's own LSTM and GRU
        # kernels, faster there than the stacked steps for a single model; cuDNN would copy the separate
        # weight tensors into one buffer every call), and its dropout; in exact mode the masks come from the
        # point's own stream, set as the random state nn.Dropout and nn.LSTM read.
        model = self.model.train(self.dropout.training)
        model.dropout.p = self.dropout.probs[0]  # (lstm2's nn.LSTM reads its own dropout, set below)
        if model.kind == "lstm" and model.lstm.num_layers > 1:
            model.lstm.dropout = self.dropout.probs[0]
        # (exact=False on the CPU, which only the tests run, draws these masks from torch's global generator)
        if not (self.exact and self.dropout.training):
            return torch.func.functional_call(model, self.weights[0], (x,)).unsqueeze(0)
        generator = self.dropout.generators[0]
        with torch.random.fork_rng(devices=[]):
            torch.random.set_rng_state(generator.get_state())
            logits = torch.func.functional_call(model, self.weights[0], (x,))
            generator.set_state(torch.random.get_rng_state())
        return logits.unsqueeze(0)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One Adam step of every point on the batch; their losses (P,), detached."""
        losses = point_losses(self.logits(x), y, weights)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # the points share no weights: each gets its own loss's gradient
        self.optimizer.step()
        return losses.detach()

    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                 batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Every point's mean loss (P,) and predicted classes (P, N) on ``(x, y)``, as sequence_model.evaluate."""
        self.dropout.training = False
        losses = torch.zeros(len(self.index), dtype=torch.float64, device=x.device)
        preds = []
        for i in range(0, len(x), batch_size):
            logits = self.logits(x[i:i + batch_size])
            losses += point_losses(logits, y[i:i + batch_size], weights).double() * logits.shape[1]
            preds.append(logits.argmax(dim=2))
        self.dropout.training = True
        return (losses / max(len(x), 1)).cpu().numpy(), torch.cat(preds, dim=1).cpu().numpy()

    def keep_best(self, positions: list[int]) -> None:
        """Remember the current weights of the points at these stack positions as their best."""
        for k in positions:
            self.best[self.index[k]] = {name: w.detach().clone() for name, w in self.weights[k].items()}

    def drop_all_but(self, positions: list[int]) -> None:
        """Continue with the points at these stack positions only: the others have stopped and no longer change."""
        self.index = [self.index[k] for k in positions]
        self.lrs = [self.lrs[k] for k in positions]
        self.weights = [self.weights[k] for k in positions]
        self.dropout.select(positions)
        if self.weights:
            self.optimizer = self._adam(previous=self.optimizer)

    def best_states(self) -> dict[int, dict[str, torch.Tensor]]:
        """Each of the stack's points' best weights (a SequenceClassifier state dict, on the CPU), by job point."""
        return {point: {name: w.cpu() for name, w in best.items()} for point, best in self.best.items()}

    def snapshot(self) -> dict:
        """The training state of the points still in the stack: weights, Adam's state, dropout streams."""
        return {"index": list(self.index), "weights": [{k: w.detach() for k, w in weights.items()} for weights in self.weights],
                "optimizer": self.optimizer.state_dict(),
                "generators": [g.get_state() for g in self.dropout.generators] if self.exact else None,
                "device_generator": None if self.exact else self.dropout._device_generator.get_state()}

    @classmethod
    def restore(cls, arch: str, shape: tuple[int, int, int, int], saved: dict, best: dict[int, dict],
                points: Sequence[Point], device: torch.device) -> Stack:
        """The stack a :meth:`snapshot` describes, with its points' best weights."""
        generators = None
        if saved["generators"] is not None:
            generators = [torch.Generator() for _ in saved["generators"]]
            for generator, state in zip(generators, saved["generators"]):
                generator.set_state(state)
        stack = cls(arch, shape, saved["index"], saved["weights"], generators, [points[i] for i in saved["index"]],
                    device, 0)
        stack.optimizer.load_state_dict(saved["optimizer"])
        if saved["device_generator"] is not None:
            stack.dropout._device_generator.set_state(saved["device_generator"])
        stack.best = {i: {name: w.to(device) for name, w in best[i].items()} for i in stack.index}
        return stack


def train_points(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, *, arch: str,
                 hidden: int, points: Sequence[Point], num_classes: int, epochs: int, patience: int, batch_size: int,
                 order_seed: int, device: str | torch.device = "cpu", stack_size: int | None = None,
                 exact: bool | None = None, on_epoch: Callable[[int, dict], None] | None = None,
                 on_epoch_end: Callable[[int, Callable[[], dict]], None] | None = None,
                 resume_from: dict | None = None) -> list[TrainResult]:
    """Train the ``points`` (one architecture and hidden size) together; one result per point, in order.

    ``train_x`` (N, T, D): the windows; T is also the transformer's position table (its ``window_length``).

    The batch order is drawn from ``order_seed`` (shared); ``on_epoch(point_index, metrics)`` receives
    each point's metrics of each epoch it trains. A point equals ``sequence_model.train`` with
    ``seed=point.seed`` when ``order_seed == point.seed`` (see the module docstring); its ``seconds``
    is the wall time of the job's epoch (all points still training).
    ``stack_size``: points per fused computation (default :func:`default_stack_size`); each batch
    goes through the stacks one after another. ``exact`` (default: on the CPU): each point's own
    dropout stream and torch's per-tensor Adam, as alone; else (the GPU default) one mask draw for
    all points and torch's fused Adam: fewer, larger operations.
    ``on_epoch_end(epoch, snapshot)``: called after each epoch; ``snapshot()`` gives the training state
    (see the module docstring), from which ``resume_from`` continues (with the same data and arguments).
    """
    if len(val_x) == 0:
        raise ValueError("no validation windows: early stopping needs a val split with windows (see windows counts)")
    if not points:
        return []
    dev = torch.device(device)
    # data: on the device once
    xs, vx = (torch.tensor(x, dtype=torch.float32, device=dev) for x in (train_x, val_x))
    ys, vy = (torch.tensor(y, dtype=torch.long, device=dev) for y in (train_y, val_y))
    weights = class_weights(train_y, num_classes).to(dev)
    # models: each point initialised as it would be alone, then stacked (points first)
    shape = (train_x.shape[2], hidden, num_classes, train_x.shape[1])  # input_dim, hidden, classes, window_length
    states, generators = zip(*(init_point(arch, *shape[:3], p, shape[3]) for p in points))
    size = stack_size or default_stack_size(arch, *shape[:3], len(points), dev, shape[3])
    exact = dev.type == "cpu" if exact is None else exact
    stacks = []
    for first in range(0, len(points), size):
        index = list(range(first, min(first + size, len(points))))
        stacks.append(Stack(arch, shape, index, [states[i] for i in index],
                            [generators[i] for i in index] if exact else None,
                            [points[i] for i in index], dev, order_seed + first))
    results = [TrainResult({}, 0, math.inf, 0.0) for _ in points]
    stale = [0] * len(points)
    order_generator = torch.Generator().manual_seed(order_seed)
    first = 1
    if resume_from is not None:  # the points' state after epoch resume_from["epoch"]
        best = {int(i): state for i, state in resume_from["best"].items()}
        stacks = [Stack.restore(arch, shape, saved, best, points, dev) for saved in resume_from["stacks"]]
        for i, (result, saved) in enumerate(zip(results, resume_from["results"])):
            result.best_epoch, result.val_loss, result.val_macro_f1 = saved["best_epoch"], saved["val_loss"], saved["val_macro_f1"]
            result.history, result.state_dict = list(saved["history"]), best.get(i, {})
        stale = list(resume_from["stale"])
        order_generator.set_state(resume_from["order_rng"])
        resume.set_rng_state(resume_from["rng"])  # (a one-point stack's dropout off the exact path draws from it)
        first = resume_from["epoch"] + 1
    all_stacks = list(stacks)

    def snapshot(epoch: int) -> dict:
        best = {i: r.state_dict for i, r in enumerate(results) if r.state_dict}  # points that have stopped
        best.update({i: state for stack in all_stacks for i, state in stack.best_states().items()})
        return {"epoch": epoch, "order_rng": order_generator.get_state(), "rng": resume.rng_state(),
                "stale": list(stale), "best": best,
                "stacks": [stack.snapshot() for stack in stacks],
                "results": [{"best_epoch": r.best_epoch, "val_loss": r.val_loss, "val_macro_f1": r.val_macro_f1,
                             "history": r.history} for r in results]}

    # epoch loop; each point stops on its own val loss
    for epoch in range(first, epochs + 1 if stacks else first):
        start = time.perf_counter()
        totals = [torch.zeros(len(stack.index), dtype=torch.float64, device=dev) for stack in stacks]
        order = torch.randperm(len(xs), generator=order_generator).to(dev)
        for i in range(0, len(xs), batch_size):
            batch = order[i:i + batch_size]
            x, y = xs[batch], ys[batch]
            for stack, total in zip(stacks, totals):
                total += stack.train_step(x, y, weights).double() * len(batch)
        evaluated = [stack.evaluate(vx, vy, weights) for stack in stacks]
        seconds = time.perf_counter() - start
        for stack, total, (val_losses, val_preds) in zip(stacks, totals, evaluated):
            train_losses = (total / len(xs)).cpu().numpy()
            val_f1s = macro_f1(val_y, val_preds)
            improved, keep = [], []
            for k, index in enumerate(stack.index):
                val_f1 = val_f1s[k]
                metrics = {"epoch": epoch, "train_loss": float(train_losses[k]), "val_loss": float(val_losses[k]),
                           "val_macro_f1": float(val_f1), "seconds": seconds}
                result = results[index]
                result.history.append(metrics)
                if on_epoch:
                    on_epoch(index, metrics)
                if metrics["val_loss"] < result.val_loss:
                    result.best_epoch, result.val_loss, result.val_macro_f1 = epoch, metrics["val_loss"], float(val_f1)
                    improved.append(k)
                    stale[index] = 0
                else:
                    stale[index] += 1
                if stale[index] >= patience:
                    log.info("point %d early stop at epoch %d: val loss has not improved for %d epochs (best epoch %d)",
                             index, epoch, patience, result.best_epoch)
                else:
                    keep.append(k)
            if improved:
                stack.keep_best(improved)
            if len(keep) < len(stack.index):  # a stopped point leaves the stack: it no longer changes
                stack.drop_all_but(keep)
        stacks = [stack for stack in stacks if stack.index]
        if on_epoch_end:
            on_epoch_end(epoch, lambda: snapshot(epoch))
        if not stacks:
            break
    for stack in all_stacks:
        for point, state in stack.best_states().items():
            results[point].state_dict = state
    return results

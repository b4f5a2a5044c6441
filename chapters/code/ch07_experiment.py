"""Small, seeded experiments for chapter 7, "Does it help, and why?".

Everything here trains a small multilayer perceptron on scikit-learn's
digits (1797 grey 8x8 images, shipped inside the package: nothing is
downloaded) with plain SGD on the CPU, with and without batch norm.

The functions are deliberately plain:

* :func:`load_data` - the fixed train/test split, standardized with
  :class:`bnlib.StandardScaler` fitted on the training part only.
* :func:`make_mlp` - the network; ``norm`` is ``"none"``, ``"bn"`` or
  ``"noisy_bn"`` (batch norm followed by the time-varying noise of
  Santurkar et al. 2018, which *adds* distribution shift).
* :func:`train` - one seeded run; returns a :class:`Run` with per-epoch
  full-training-set loss and test accuracy (both in evaluation mode).
* :func:`run_grid` / :func:`summarize` - many runs and their mean over seeds.
* :func:`landscape_probe` - Santurkar-style measurement of how much the loss
  and the gradient change along the current gradient direction.

Every run calls ``torch.manual_seed`` and draws its mini-batch order from its
own seeded generator, and PyTorch runs single-threaded in deterministic mode,
so a run gives the same numbers every time on the same machine.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from bnlib import StandardScaler

NORMS = ("none", "bn", "noisy_bn")
LABELS = {"none": "no BN", "bn": "BN", "noisy_bn": "BN + noise"}
COLORS = {"none": "tab:blue", "bn": "tab:orange", "noisy_bn": "tab:green"}


def setup_torch(threads: int = 1) -> None:
    """Make PyTorch small and repeatable: few threads, deterministic kernels."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


# ---------------------------------------------------------------- data

@dataclass
class Data:
    """Train/test tensors. ``x_*``: (N, 64) float32; ``y_*``: (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data(test_size: float = 0.25, split_seed: int = 0) -> Data:
    """Digits, stratified split, z-scored with training statistics only.

    Pixels that are constant on the training set keep scale 1 (bnlib's rule),
    so no division by zero happens.
    """
    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.data, digits.target, test_size=test_size,
        random_state=split_seed, stratify=digits.target)
    scaler = StandardScaler().fit(x_tr)

    def as_x(a):
        return torch.tensor(a, dtype=torch.float32)

    def as_y(a):
        return torch.tensor(a, dtype=torch.int64)

    return Data(as_x(scaler.transform(x_tr)), as_y(y_tr),
                as_x(scaler.transform(x_te)), as_y(y_te))


# ---------------------------------------------------------------- model

class NoisyShift(nn.Module):
    """Per-unit random scale and shift, redrawn at every training step.

    A variant of Santurkar et al.'s (2018, section 2.1) noisy batch norm:
    after each batch norm layer, multiply every unit by a random factor and
    add a random offset, both redrawn each step, so that the *distribution*
    the next layer sees keeps moving (more "internal covariate shift", not
    less). Unlike their noise, which is drawn for every activation of every
    example, one draw per unit is shared by the whole batch. In
    evaluation mode it applies the average transform, ``x * E[scale]``
    (the average offset is 0), so inference sees what training saw on
    average.

    Parameters
    ----------
    max_shift : float
        Offsets are drawn from U(-max_shift, max_shift).
    max_scale : float
        Scales are drawn from U(1, max_scale).
    """

    def __init__(self, max_shift: float = 1.0, max_scale: float = 2.0):
        super().__init__()
        self.max_shift = max_shift
        self.max_scale = max_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, C)
        if not self.training:
            return x * (1 + self.max_scale) / 2
        c = x.shape[1]
        shift = (torch.rand(c) * 2 - 1) * self.max_shift
        scale = 1 + torch.rand(c) * (self.max_scale - 1)
        return x * scale + shift


def make_mlp(norm: str = "none", init_scale: float = 1.0,
             hidden: tuple[int, ...] = (64, 64, 64)) -> nn.Sequential:
    """64 -> hidden... -> 10 perceptron with ReLU.

    Parameters
    ----------
    norm : {"none", "bn", "noisy_bn"}
        What sits between each hidden Linear and its ReLU: nothing,
        ``nn.BatchNorm1d``, or ``nn.BatchNorm1d`` followed by
        :class:`NoisyShift`.
    init_scale : float
        Every Linear weight is PyTorch's default initialization multiplied
        by this factor (biases are left alone). 1.0 is the default.
    hidden : tuple of int
        Widths of the hidden layers.

    Call ``torch.manual_seed`` first: the weights come from the global
    generator.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, received {norm!r}")
    layers: list[nn.Module] = []
    width_in = 64
    for width in hidden:
        layers.append(nn.Linear(width_in, width))
        if norm in ("bn", "noisy_bn"):
            layers.append(nn.BatchNorm1d(width))
        if norm == "noisy_bn":
            layers.append(NoisyShift())
        layers.append(nn.ReLU())
        width_in = width
    layers.append(nn.Linear(width_in, 10))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(init_scale)
    return model


# ---------------------------------------------------------------- training

@dataclass
class Run:
    """One training run and what it measured.

    ``train_loss[e]`` and ``test_acc[e]`` are taken after epoch ``e`` (index 0
    is before any training), on the whole set, in evaluation mode (running
    statistics). ``diverged`` is True when the loss became NaN or infinite;
    the run then stops and the remaining entries stay NaN.
    """

    norm: str
    lr: float
    init_scale: float
    batch_size: int
    seed: int
    train_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    diverged: bool = False
    #: final loss on the training set with the network still in *training*
    #: mode, fed in batches of ``batch_size`` (batch statistics, as during
    #: training); NaN for a diverged run
    train_mode_loss: float = math.nan
    #: with ``record_shift=True``: per training step, the per-unit batch mean
    #: and batch std of the input to the output layer, arrays of shape (C,)
    shift_mean: list[np.ndarray] = field(default_factory=list)
    shift_std: list[np.ndarray] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.train_loss[-1]

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1]


@torch.no_grad()
def train_mode_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int) -> float:
    """Mean loss over (x, y) in training mode, in batches of ``batch_size``.

    Works on a copy, so the running statistics of ``model`` are untouched.
    """
    m = copy.deepcopy(model).train()
    n = len(y) - len(y) % batch_size
    losses = [nn.functional.cross_entropy(m(x[i:i + batch_size]), y[i:i + batch_size]).item()
              for i in range(0, n, batch_size)]
    return float(np.mean(losses))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on (x, y) in evaluation mode."""
    model.eval()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc


def train(data: Data, norm: str = "none", lr: float = 0.1,
          init_scale: float = 1.0, batch_size: int = 64, epochs: int = 10,
          seed: int = 0, record_shift: bool = False) -> Run:
    """Train one MLP with plain SGD (no momentum, no weight decay).

    The seed fixes both the initial weights and the order of the
    mini-batches. The last, smaller mini-batch of an epoch is dropped so
    that batch norm never sees a batch of one. With ``record_shift`` the
    run also keeps, for every training step, the batch mean and std of each
    unit entering the output layer (see :func:`shift_score`).
    """
    torch.manual_seed(seed)
    model = make_mlp(norm, init_scale)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(10_000 + seed)
    run = Run(norm, lr, init_scale, batch_size, seed)
    n = len(data.y_train)
    handle = None
    if record_shift:
        def hook(module, inputs):
            if module.training:
                h = inputs[0].detach()
                run.shift_mean.append(h.mean(0).numpy())
                run.shift_std.append(h.std(0, unbiased=False).numpy())
        handle = model[-1].register_forward_pre_hook(hook)

    def record() -> bool:
        loss, _ = evaluate(model, data.x_train, data.y_train)
        _, acc = evaluate(model, data.x_test, data.y_test)
        ok = math.isfinite(loss)
        run.train_loss.append(loss if ok else math.nan)
        run.test_acc.append(acc if ok else math.nan)
        return ok

    record()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=order)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = perm[start:start + batch_size]
            xb, yb = data.x_train[idx], data.y_train[idx]
            loss = nn.functional.cross_entropy(model(xb), yb)
            if not torch.isfinite(loss):
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        if not record():
            run.diverged = True
            pad = epochs - epoch - 1
            run.train_loss += [math.nan] * pad
            run.test_acc += [math.nan] * pad
            break
    if handle is not None:
        handle.remove()                  # record training steps only
    if not run.diverged:
        run.train_mode_loss = train_mode_loss(model, data.x_train, data.y_train,
                                              batch_size)
    return run


def run_grid(data: Data, *, norms=("none", "bn"), lrs=(0.1,), init_scales=(1.0,),
             batch_sizes=(64,), seeds=(0,), epochs: int = 10) -> list[Run]:
    """Every combination of the given settings, one :func:`train` call each."""
    return [train(data, norm, lr, s, b, epochs, seed)
            for norm, lr, s, b, seed in product(norms, lrs, init_scales, batch_sizes, seeds)]


def shift_score(run: Run, skip: int = 0) -> float:
    """How much the output layer's input distribution moves between steps.

    Mean over units and steps of ``|mean_t - mean_{t-1}| / std_{t-1}``: the
    step-to-step jump of each unit's batch mean, in units of its batch
    standard deviation. Part of it is just mini-batch sampling (a fresh batch
    every step), which all models share; the rest is the weights (or the
    injected noise) moving the distribution. Units with std 0 are skipped.
    """
    m = np.stack(run.shift_mean[skip:])
    s = np.stack(run.shift_std[skip:])
    jump = np.abs(np.diff(m, axis=0))
    ok = s[:-1] > 1e-8
    return float((jump[ok] / s[:-1][ok]).mean())


def summarize(runs: list[Run], keys=("norm", "lr", "init_scale", "batch_size")) -> list[dict]:
    """Group runs that differ only in the seed; mean final loss and accuracy.

    A diverged run counts as loss NaN and accuracy NaN; the row then reports
    how many of its seeds diverged instead of pretending to have a mean.
    """
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(getattr(r, k) for k in keys), []).append(r)
    rows = []
    for key, rs in groups.items():
        ok = [r for r in rs if not r.diverged]
        row = dict(zip(keys, key))
        row["seeds"] = len(rs)
        row["diverged"] = len(rs) - len(ok)
        row["loss"] = float(np.mean([r.final_loss for r in ok])) if ok else math.nan
        row["acc"] = float(np.mean([r.final_acc for r in ok])) if ok else math.nan
        row["acc_min"] = float(min(r.final_acc for r in ok)) if ok else math.nan
        row["train_mode_loss"] = float(np.mean([r.train_mode_loss for r in ok])) if ok else math.nan
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Render rows as a Markdown table.

    ``columns`` is a list of (key, header, format) where format is a
    ``str.format`` spec such as ``".3f"``; NaN renders as "diverged".
    """
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---:" for _ in columns) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            v = row[key]
            if isinstance(v, float) and math.isnan(v):
                cells.append("diverged")
            elif key == "norm":
                cells.append(LABELS[v])
            else:
                cells.append(format(v, fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- landscape

def _flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def landscape_probe(data: Data, norm: str, lr: float = 0.1, init_scale: float = 1.0,
                    batch_size: int = 64, steps: int = 300, every: int = 20,
                    step_sizes=(0.05, 0.1, 0.2, 0.4), seed: int = 0) -> dict:
    """Santurkar-style look at the loss landscape along the training path.

    Train with SGD as in :func:`train`. Every ``every`` steps, at the current
    weights ``w`` and on the current mini-batch (in training mode, as the
    optimizer sees it), take the gradient ``g`` and, for each step size
    ``eta``, move to ``w - eta * g`` and record

    * the loss there (the *loss variation* is max minus min over ``eta``), and
    * ``||grad(w - eta * g) - g|| / ||eta * g||``, the change of the gradient
      per unit distance moved; its largest value over ``eta`` is the
      *effective beta-smoothness* of Santurkar et al. (small: the gradient
      stays predictive along the step, so large steps are safe).

    Noise layers are frozen at one draw during a probe so that only the
    weights move. Running statistics are saved and restored, so the probe
    does not change training.

    Returns
    -------
    dict with ``step`` (list of int), ``loss_range`` and ``beta``
    (lists of float, one per probe).
    """
    torch.manual_seed(seed)
    model = make_mlp(norm, init_scale)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(10_000 + seed)
    n = len(data.y_train)
    out = {"step": [], "loss_range": [], "beta": []}
    params = list(model.parameters())
    step = 0
    while step < steps:
        perm = torch.randperm(n, generator=order)
        for start in range(0, n - batch_size + 1, batch_size):
            if step >= steps:
                break
            idx = perm[start:start + batch_size]
            xb, yb = data.x_train[idx], data.y_train[idx]
            model.train()
            if step % every == 0:
                _probe(model, params, xb, yb, step_sizes, out, step)
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return out


def _probe(model, params, xb, yb, step_sizes, out, step) -> None:
    """One probe of :func:`landscape_probe` at the current weights."""
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    rng_state = torch.get_rng_state()
    w0 = [p.detach().clone() for p in params]

    def loss_and_grad():
        torch.set_rng_state(rng_state)          # same noise draw at every point
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        return loss.item(), _flat_grad(model)

    _, g = loss_and_grad()
    losses, changes = [], []
    for eta in step_sizes:
        with torch.no_grad():
            offset = 0
            for p, p0 in zip(params, w0):
                k = p.numel()
                p.copy_(p0 - eta * g[offset:offset + k].view_as(p))
                offset += k
        loss_eta, g_eta = loss_and_grad()
        losses.append(loss_eta)
        changes.append((g_eta - g).norm().item() / (eta * g.norm().item()))
    with torch.no_grad():
        for p, p0 in zip(params, w0):
            p.copy_(p0)
    model.load_state_dict(buffers, strict=False)
    model.zero_grad()
    torch.set_rng_state(rng_state)
    finite = [v for v in losses if math.isfinite(v)]
    out["step"].append(step)
    out["loss_range"].append(max(finite) - min(finite) if len(finite) == len(losses) else math.inf)
    out["beta"].append(max(changes))


# ---------------------------------------------------------------- plots

def plot_curves(ax, runs: list[Run], key: str = "train_loss") -> None:
    """Per-epoch ``key`` of each run on ``ax``: one colour per norm, thin line
    per seed. A diverged run ends with an x at its last finite value."""
    for r in runs:
        values = np.asarray(getattr(r, key), dtype=float)
        ok = np.isfinite(values)
        epochs = np.arange(len(values))
        ax.plot(epochs[ok], values[ok], color=COLORS[r.norm], lw=1, alpha=0.8)
        if r.diverged:
            last = np.flatnonzero(ok)[-1]
            ax.plot(epochs[last], values[last], "x", color=COLORS[r.norm], ms=8, mew=2)


def plot_lr_init_grid(runs: list[Run], lrs, init_scales):
    """One panel per (init scale, learning rate): training loss against epoch."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(init_scales), len(lrs), figsize=(2.4 * len(lrs), 2.0 * len(init_scales)),
                             sharex=True, sharey=True, constrained_layout=True)
    for i, s in enumerate(init_scales):
        for j, lr in enumerate(lrs):
            ax = axes[i, j]
            plot_curves(ax, [r for r in runs if r.lr == lr and r.init_scale == s])
            ax.set_yscale("log")
            if i == 0:
                ax.set_title(f"lr = {lr:g}", fontsize=10)
            if j == 0:
                ax.set_ylabel(f"init x{s:g}\ntrain loss")
            if i == len(init_scales) - 1:
                ax.set_xlabel("epoch")
    handles = [plt.Line2D([], [], color=COLORS[n], label=LABELS[n]) for n in sorted({r.norm for r in runs}, key=NORMS.index)]
    handles.append(plt.Line2D([], [], color="grey", marker="x", ls="", label="diverged (NaN)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    return fig


def plot_batch_sizes(rows: list[dict]):
    """Test accuracy and the two training losses against batch size."""
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
    for norm in [n for n in NORMS if any(r["norm"] == n for r in rows)]:
        rs = sorted((r for r in rows if r["norm"] == norm), key=lambda r: r["batch_size"])
        b = [r["batch_size"] for r in rs]
        a1.plot(b, [r["acc"] for r in rs], "o-", color=COLORS[norm], label=LABELS[norm])
        a2.plot(b, [r["loss"] for r in rs], "o-", color=COLORS[norm], label=f"{LABELS[norm]}, eval mode")
        if norm != "none":
            a2.plot(b, [r["train_mode_loss"] for r in rs], "s--", color=COLORS[norm], mfc="white",
                    label=f"{LABELS[norm]}, training mode")
    sizes = sorted({r["batch_size"] for r in rows})
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("batch size")
        ax.legend(fontsize=8)
    a1.set_ylabel("test accuracy (mean over seeds)")
    a2.set_ylabel("final training loss")
    a2.set_yscale("log")
    return fig


def plot_shift(runs: list[Run], unit: int = 0, window: int = 200):
    """Left: batch mean of one unit entering the output layer, step by step.
    Right: training loss per epoch. One run per norm."""
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
    for r in runs:
        m = np.stack(r.shift_mean)[:window, unit]
        a1.plot(m, color=COLORS[r.norm], lw=1, label=LABELS[r.norm])
        a2.plot(r.train_loss, "o-", color=COLORS[r.norm], ms=3, label=LABELS[r.norm])
    a1.set_xlabel("training step")
    a1.set_ylabel(f"batch mean of unit {unit}\n(input to output layer)")
    a2.set_xlabel("epoch")
    a2.set_ylabel("train loss (eval mode)")
    a2.set_yscale("log")
    a1.legend(fontsize=8)
    return fig


def plot_probe(probes: dict):
    """Loss variation and effective beta-smoothness along training, per norm."""
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
    for norm, p in probes.items():
        a1.plot(p["step"], p["loss_range"], "o-", ms=3, color=COLORS[norm], label=LABELS[norm])
        a2.plot(p["step"], p["beta"], "o-", ms=3, color=COLORS[norm], label=LABELS[norm])
    a1.set_ylabel("loss variation along -gradient")
    a1.set_yscale("log")
    a2.set_ylabel("effective beta-smoothness")
    for ax in (a1, a2):
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    return fig

"""Sample submissions: a small class to try the grading command on at once.

``python -m grading.samples DEST`` writes a messy folder as an LMS would hand
it over: right answers, blank notebooks, the typical mistakes of
:data:`CATALOG` (the same catalog the tests grade), and broken hand-ins (not
JSON, an old nbformat, a wrong file name, an extra file, a notebook that kills
its kernel). The notebooks are built from today's ``release/`` and
``solutions/``, so they never drift from the assignments.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

from . import course as C

SOLUTION = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*\n", re.M)


def answer_code(assignment: str) -> dict[str, str]:
    """The solution of each autograded answer cell, markers removed, by grade id."""
    nb = nbformat.read(C.PROJECT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    return {
        cell.metadata["nbgrader"]["grade_id"]: SOLUTION.sub("", cell.source)
        for cell in nb.cells
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution")
    }



def fill(root: Path, assignment: str, answers: dict[str, str] | None):
    """The student version of ``assignment`` under ``root/release`` with ``answers`` typed into its answer cells."""
    nb = nbformat.read(Path(root) / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if answers and gid in answers:
            cell.source = answers[gid]
    return nb


# The catalog: (assignment, {answer cell: wrong code}, tests that must lose their points, mistake named).
FWD_ND = "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    {body}\n"
FWD_4D = "def spatial_batchnorm_forward(x, gamma, beta, eps=1e-5):\n    {body}\n"
STAGED = "def batchnorm_backward_staged(dout, x, gamma, eps=1e-5):\n    {body}\n"
CLOSED = "def batchnorm_backward(dout, x, gamma, eps=1e-5):\n    {body}\n"
PRE = "inv = 1 / np.sqrt(x.var(0) + eps); xhat = (x - x.mean(0)) * inv\n    "


def layer(update: str, training_stats="x.mean(axes), x.var(axes)", update_in_eval=False) -> str:
    return f'''
class RunningBatchNorm:
    def __init__(self, num_features, momentum, eps, convention):
        self.m, self.eps, self.conv = momentum, eps, convention
        self.running_mean, self.running_var = np.zeros(num_features), np.ones(num_features)

    def __call__(self, x, training):
        axes = tuple(i for i in range(x.ndim) if i != 1)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        n = x.size // x.shape[1]
        mean, var = ({training_stats}) if training else (self.running_mean, self.running_var)
        if training or {update_in_eval}:
            bm, bv = x.mean(axes), x.var(axes)
            {update}
        return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + self.eps)
'''


RIGHT_UPDATE = (
    "w, bv = (self.m, bv * n / (n - 1)) if self.conv == 'torch' else (1 - self.m, bv)\n"
    "            self.running_mean = (1 - w) * self.running_mean + w * bm\n"
    "            self.running_var = (1 - w) * self.running_var + w * bv"
)

# Chapters 5 and 6: Keras and PyTorch answers.
SEQ = "def make_sequence_bn():\n    return keras.layers.BatchNormalization({args})\n"
COUNTS = "def param_counts(n_in, n_hidden, n_out):\n    d = n_in * n_hidden + n_hidden * n_out{biases}\n    return {ret}\n"
FREEZE = "def freeze_batchnorm(model):\n    {body}\n"
PREDICT = ("def predict(model, x):\n    was = model.training\n    {eval}\n    with torch.no_grad():\n"
           "        out = model(torch.from_numpy(x)).numpy()\n    {restore}\n    return out\n")
PORT = ("def keras_bn_to_torch(layer):\n    g, b, m, v = layer.get_weights()\n"
        "    bn = torch.nn.BatchNorm1d(g.shape[0], {kwargs})\n    with torch.no_grad():\n"
        "        bn.weight.copy_(torch.from_numpy(g)); bn.bias.copy_(torch.from_numpy(b))\n"
        "        bn.running_mean.copy_(torch.from_numpy({mean})); bn.running_var.copy_(torch.from_numpy({var}))\n"
        "    return bn\n")
FOLD = ("def fold_into_linear(linear, bn):\n    with torch.no_grad():\n"
        "        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)\n"
        "        new = torch.nn.Linear(linear.in_features, linear.out_features)\n"
        "        new.weight.copy_(linear.weight * s[:, None])\n        new.bias.copy_({bias})\n    return new\n")

# Chapter 9: layer norm and group norm, forward and backward (the backward test runs the forward first,
# so a forward mistake loses both tests of its norm, named in both).
LN_FWD = ("def layernorm_forward(x, gamma, beta, eps=1e-5):\n    {stats}\n    inv_std = {inv}\n"
          "    xhat = (x - mu) * inv_std\n    return gamma * xhat + beta, (xhat, gamma, inv_std)\n")
LN_ROWS = "mu, var = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True{ddof})"
LN_BWD = ("def layernorm_backward(dout, cache):\n    xhat, gamma, inv_std = cache\n"
          "    lead = tuple(range(dout.ndim - 1))\n    {dx}\n"
          "    return dx, (dout * xhat).sum(axis=lead), dout.sum(axis=lead)\n")
GN_FWD = ("def groupnorm_forward(x, gamma, beta, num_groups, eps=1e-5):\n    N, C, H, W = x.shape\n"
          "    xg = x.reshape({view})\n    mu, var = xg.mean(axis={axes}, keepdims=True), xg.var(axis={axes}, keepdims=True)\n"
          "    inv_std = 1.0 / np.sqrt(var + eps)\n    xhat = ((xg - mu) * inv_std).reshape(N, C, H, W)\n"
          "    out = gamma.reshape(1, C, 1, 1) * xhat + beta.reshape(1, C, 1, 1)\n"
          "    return out, (xhat, gamma, inv_std, num_groups)\n")
GN_BWD = ("def groupnorm_backward(dout, cache):\n    xhat, gamma, inv_std, G = cache\n    N, C, H, W = dout.shape\n"
          "    d = (dout * gamma.reshape(1, C, 1, 1)).reshape(N, G, -1)\n    xg = xhat.reshape(N, G, -1)\n"
          "    dx = inv_std * ({bracket})\n"
          "    return dx.reshape(N, C, H, W), {dgamma}, dout.sum(axis=(0, 2, 3))\n")
GN_RIGHT = dict(bracket="d - d.mean(axis=2, keepdims=True) - xg * (d * xg).mean(axis=2, keepdims=True)",
                dgamma="(dout * xhat).sum(axis=(0, 2, 3))")
LN_TESTS, GN_TESTS = {"test-ln-forward", "test-ln-backward"}, {"test-gn-forward", "test-gn-backward"}

CATALOG = [
    ("ch02-forward", {"answer-forward-nd": FWD_ND.format(
        body="return gamma * (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + eps) + beta")},
     {"test-forward-nd"}, "unbiased-variance"),
    ("ch02-forward", {"answer-forward-nd": FWD_ND.format(body="return gamma * (x - x.mean(0)) / (x.std(0) + eps) + beta")},
     {"test-forward-nd"}, "eps-outside-sqrt"),
    ("ch02-forward", {"answer-forward-nd": FWD_ND.format(
        body="m, v = x.mean(1, keepdims=True), x.var(1, keepdims=True)\n    return gamma * (x - m) / np.sqrt(v + eps) + beta")},
     {"test-forward-nd"}, "statistics-over-features"),
    ("ch02-forward", {"answer-forward-nchw": FWD_4D.format(
        body="g, b = gamma.reshape(1, -1, 1, 1), beta.reshape(1, -1, 1, 1)\n"
             "    return g * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + b")},
     {"test-forward-nchw"}, "statistics-over-batch-only"),
    ("ch02-forward", {"answer-forward-nchw": FWD_4D.format(
        body="m, v = x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)\n    return (x - m) / np.sqrt(v + eps)")},
     {"test-forward-nchw"}, "no-gamma-beta"),
    ("ch03-backward", {"answer-staged": STAGED.format(
        body=PRE + "return gamma * inv * (dout - xhat * (dout * xhat).mean(0)), (dout * xhat).sum(0), dout.sum(0)")},
     {"test-staged"}, "missing-mean-path"),
    ("ch03-backward", {"answer-closed": CLOSED.format(
        body=PRE + "return gamma * inv * (dout - dout.mean(0)), (dout * xhat).sum(0), dout.sum(0)")},
     {"test-closed"}, "missing-variance-path"),
    ("ch03-backward", {"answer-closed": CLOSED.format(body=PRE + "return gamma * inv * dout, (dout * xhat).sum(0), dout.sum(0)")},
     {"test-closed"}, "only-direct-path"),
    ("ch03-backward", {"answer-closed": CLOSED.format(
        body=PRE + "return gamma * inv * (dout - dout.mean(0) - xhat * (dout * xhat).mean(0)), dout * xhat, dout.sum(0)")},
     {"test-closed"}, "wrong-shape"),
    ("ch03-backward", {"answer-numgrad": "def numerical_gradient(f, x, dout, h=1e-5):\n    g = np.zeros_like(x)\n"
                       "    base = np.sum(f(x) * dout)\n"
                       "    for i in np.ndindex(x.shape):\n        xp = x.copy(); xp[i] += h\n"
                       "        g[i] = (np.sum(f(xp) * dout) - base) / h\n    return g\n"},
     {"test-numgrad"}, "forward-difference"),
    ("ch04-running-stats", {"answer-layer": layer(RIGHT_UPDATE.replace("(1 - self.m, bv)", "(self.m, bv)"))},
     {"test-layer-keras"}, "momentum-flipped"),
    ("ch04-running-stats", {"answer-layer": layer(RIGHT_UPDATE.replace("n / (n - 1)", "x.shape[0] / (x.shape[0] - 1)"))},
     {"test-layer-torch"}, "bessel-with-N"),
    ("ch04-running-stats", {"answer-layer": layer(RIGHT_UPDATE.replace("bv * n / (n - 1)", "bv"))},
     {"test-layer-torch"}, "bessel-flipped"),
    ("ch04-running-stats", {"answer-layer": layer("pass")},
     {"test-layer-torch", "test-layer-keras"}, "not-updated"),
    ("ch04-running-stats", {"answer-layer": layer(RIGHT_UPDATE, update_in_eval=True)},
     {"test-layer-torch", "test-layer-keras"}, "updated-in-inference"),
    ("ch04-running-stats", {"answer-layer": layer(RIGHT_UPDATE).replace(
        "if training else (self.running_mean, self.running_var)", "")},
     {"test-layer-torch", "test-layer-keras"}, "batch-stats-in-inference"),
    ("ch01-scaling", {"answer-standard": "def standardize_fit(X):\n    return X.mean(0), X.std(0, ddof=1)\n\n\n"
                      "def standardize_transform(X, stats):\n"
                      "    return (X - stats[0]) / np.where(stats[1] == 0, 1.0, stats[1])\n"},
     {"test-standard"}, "unbiased-std"),
    ("ch01-scaling", {"answer-minmax": "def minmax_fit(X):\n    return X.min(0), X.max(0)\n\n\n"
                      "def minmax_transform(X, stats):\n    lo, hi = X.min(0), X.max(0)\n"
                      "    return (X - lo) / np.where(hi == lo, 1.0, hi - lo)\n"},
     {"test-minmax"}, "fitted-on-test-data"),
    ("ch05-keras", {"answer-axis": SEQ.format(args="axis=1")}, {"test-axis"}, "normalized-time-steps"),
    ("ch05-keras", {"answer-counts": COUNTS.format(biases=" + n_hidden + n_out", ret="d + 4 * n_hidden, 0")},
     {"test-counts"}, "moving-stats-trainable"),
    ("ch05-keras", {"answer-freeze": FREEZE.format(body="model.trainable = False")}, {"test-freeze"}, "froze-everything"),
    ("ch05-keras", {"answer-freeze": FREEZE.format(body="for layer in model.layers:\n        layer.trainable = True")},
     {"test-freeze"}, "not-frozen"),
    ("ch06-pytorch", {"answer-predict": PREDICT.format(eval="pass", restore="pass")}, {"test-predict"}, "forgot-eval"),
    ("ch06-pytorch", {"answer-predict": PREDICT.format(eval="model.eval()", restore="model.train()")},
     {"test-predict"}, "mode-not-restored"),
    ("ch06-pytorch", {"answer-port": PORT.format(kwargs="momentum=1 - layer.momentum", mean="m", var="v")},
     {"test-port"}, "eps-not-copied"),
    ("ch06-pytorch", {"answer-port": PORT.format(kwargs="eps=layer.epsilon, momentum=layer.momentum", mean="m", var="v")},
     {"test-port"}, "momentum-not-converted"),
    ("ch06-pytorch", {"answer-fold": FOLD.format(bias="-bn.running_mean * s + bn.bias")},
     {"test-fold"}, "forgot-linear-bias"),
    ("ch09-normalization-family", {"answer-ln-forward": LN_FWD.format(
        stats="mu, var = x.mean(axis=0, keepdims=True), x.var(axis=0, keepdims=True)", inv="1.0 / np.sqrt(var + eps)")},
     LN_TESTS, "statistics-over-batch"),
    ("ch09-normalization-family", {"answer-ln-forward": LN_FWD.format(
        stats=LN_ROWS.format(ddof=""), inv="1.0 / (np.sqrt(var) + eps)")},
     LN_TESTS, "eps-outside-sqrt"),
    ("ch09-normalization-family", {"answer-ln-forward": LN_FWD.format(
        stats=LN_ROWS.format(ddof=", ddof=1"), inv="1.0 / np.sqrt(var + eps)")},
     LN_TESTS, "unbiased-variance"),
    ("ch09-normalization-family", {"answer-ln-backward": LN_BWD.format(dx="dx = gamma * inv_std * dout")},
     {"test-ln-backward"}, "only-direct-path"),
    ("ch09-normalization-family", {"answer-ln-backward": LN_BWD.format(
        dx="d = gamma * dout\n    dx = inv_std * (d - xhat * (d * xhat).mean(axis=-1, keepdims=True))")},
     {"test-ln-backward"}, "missing-mean-path"),
    ("ch09-normalization-family", {"answer-ln-backward": LN_BWD.format(
        dx="dx = gamma * inv_std * (dout - dout.mean(axis=-1, keepdims=True)"
           " - xhat * (dout * xhat).mean(axis=-1, keepdims=True))")},
     {"test-ln-backward"}, "gamma-factored-out"),
    ("ch09-normalization-family", {"answer-gn-forward": GN_FWD.format(
        view="N, C // num_groups, num_groups, H * W", axes="(1, 3)")},
     GN_TESTS, "groups-interleaved"),
    ("ch09-normalization-family", {"answer-gn-forward": GN_FWD.format(view="N, -1, num_groups", axes="1")},
     GN_TESTS, "groups-along-wrong-axis"),
    ("ch09-normalization-family", {"answer-gn-backward": GN_BWD.format(
        **GN_RIGHT | {"bracket": "d - d.mean(axis=2, keepdims=True)"})},
     {"test-gn-backward"}, "missing-variance-path"),
    ("ch09-normalization-family", {"answer-gn-backward": GN_BWD.format(**GN_RIGHT | {"dgamma": "dout.sum(axis=(0, 2, 3))"})},
     {"test-gn-backward"}, "dgamma-without-xhat"),
]


def build(dest: Path, root: Path = C.PROJECT) -> Path:
    """Write the sample class into ``dest`` (created); return it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for assignment in C.assignments(root):
        right = answer_code(assignment)
        nbformat.write(fill(root, assignment, right), dest / f"ada_{assignment}.ipynb")
        nbformat.write(fill(root, assignment, None), dest / f"blake_{assignment}.ipynb")
    for i, (assignment, wrong, _, _mistake) in enumerate(CATALOG):
        student = f"student{i:02d}"
        nbformat.write(fill(root, assignment, answer_code(assignment) | wrong), dest / f"{student}_{assignment}.ipynb")
    first = C.assignments(root)[0]
    (dest / "casey").mkdir(exist_ok=True)
    nbformat.write(fill(root, first, answer_code(first)), dest / "casey" / "Untitled (1).ipynb")
    (dest / "casey" / "notes.txt").write_text("my notes\n")
    (dest / f"drew_{first}.ipynb").write_text('{"cells": [')  # truncated upload
    nb3 = nbformat.convert(fill(root, first, answer_code(first)), 3)
    nbformat.write(nb3, dest / f"emery_{first}.ipynb", version=3)
    second = C.assignments(root)[1]
    killer = answer_code(second)
    gid = sorted(killer)[-1]
    killer[gid] = "import os\nos._exit(1)\n"
    nbformat.write(fill(root, second, killer), dest / f"finley_{second}.ipynb")
    return dest


if __name__ == "__main__":
    out = build(Path(sys.argv[1]) if len(sys.argv) > 1 else C.PROJECT / "_grading" / "sample-submissions")
    print(f"sample submissions written to {out}")

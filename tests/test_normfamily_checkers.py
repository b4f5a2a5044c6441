"""The layer-norm and group-norm checkers (chapter 9's exercise) pass a right
answer, written several ways, and name each realistic wrong one, on several
seeds (shapes and values differ per seed).

The learner's forward pass returns ``(out, cache)`` with a cache of their own
making; the backward checks run it first, so a wrong forward pass also fails
the backward check, named after the forward's mistake.
"""

import numpy as np
import pytest

from bncheck.probes import (
    HIDDEN,
    CheckFailed,
    check_groupnorm,
    check_groupnorm_backward,
    check_layernorm,
    check_layernorm_backward,
)

SEEDS = range(6)


# ------------------------------------------------------------ layer norm --
def ln_forward(x, gamma, beta, eps=1e-5, *, axes=-1, ddof=0, eps_inside=True):
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True, ddof=ddof)
    inv = 1.0 / np.sqrt(var + eps) if eps_inside else 1.0 / (np.sqrt(var) + eps)
    xhat = (x - mu) * inv
    return gamma * xhat + beta, (xhat, gamma, inv)


def ln_backward(dout, cache, *, mean_path=True, var_path=True, factored=False, over_batch=False):
    xhat, gamma, inv = cache
    lead = tuple(range(dout.ndim - 1))
    dbeta, dgamma = dout.sum(axis=lead), (dout * xhat).sum(axis=lead)
    g = dout if factored or over_batch else dout * gamma
    axis = 0 if over_batch else -1
    t = g.copy()
    if mean_path:
        t = t - g.mean(axis=axis, keepdims=True)
    if var_path:
        t = t - xhat * (g * xhat).mean(axis=axis, keepdims=True)
    dx = inv * t * (gamma if factored or over_batch else 1.0)
    return dx, dgamma, dbeta


def ln_loops(x, gamma, beta, eps=1e-5):
    """Row by row in Python floats, the cache a dict."""
    out = np.empty_like(x)
    rows = x.reshape(-1, x.shape[-1])
    flat = out.reshape(-1, x.shape[-1])
    invs = []
    for i, row in enumerate(rows):
        vals = [float(v) for v in row]
        m = sum(vals) / len(vals)
        v = sum((a - m) ** 2 for a in vals) / len(vals)
        invs.append(1.0 / (v + eps) ** 0.5)
        for j, a in enumerate(vals):
            flat[i, j] = gamma[j] * (a - m) * invs[-1] + beta[j]
    return out, {"x": x, "gamma": gamma, "eps": eps}


def ln_backward_recompute(dout, cache):
    """Recomputes everything from x, in long double."""
    x, gamma, eps = (np.asarray(cache[k], dtype=np.longdouble) for k in ("x", "gamma", "eps"))
    xc = x - x.mean(-1, keepdims=True)
    inv = 1 / np.sqrt((xc**2).mean(-1, keepdims=True) + eps)
    xhat = xc * inv
    d = dout * gamma
    dx = inv * (d - d.mean(-1, keepdims=True) - xhat * (d * xhat).mean(-1, keepdims=True))
    lead = tuple(range(dout.ndim - 1))
    return dx.astype(np.float64), (dout * xhat).sum(lead).astype(np.float64), dout.sum(lead)


class LayerNorm:
    """A class whose instance is the forward pass."""

    def __call__(self, x, gamma, beta, eps=1e-5):
        return ln_forward(x, gamma, beta, eps)


@pytest.mark.parametrize("layout", ["ND", "NLD"])
@pytest.mark.parametrize("seed", SEEDS)
def test_right_layernorm_passes_written_several_ways(seed, layout):
    check_layernorm(ln_forward, seed=seed, layout=layout)
    check_layernorm(ln_loops, seed=seed, layout=layout)
    check_layernorm(LayerNorm(), seed=seed, layout=layout)
    check_layernorm_backward(ln_forward, ln_backward, seed=seed, layout=layout)
    check_layernorm_backward(ln_loops, ln_backward_recompute, seed=seed, layout=layout)


def _diagnosed(check, *fns, seed, **kw):
    with pytest.raises(CheckFailed) as info:
        check(*fns, seed=seed, **kw)
    return info.value


LN_FORWARD_WRONG = {
    "statistics-over-batch": lambda x, g, b, eps: ln_forward(x, g, b, eps, axes=0),
    "statistics-over-everything": lambda x, g, b, eps: ln_forward(x, g, b, eps, axes=None),
    "unbiased-variance": lambda x, g, b, eps: ln_forward(x, g, b, eps, ddof=1),
    "eps-outside-sqrt": lambda x, g, b, eps: ln_forward(x, g, b, eps, eps_inside=False),
    "no-gamma-beta": lambda x, g, b, eps: (lambda c: (c[0], c))(ln_forward(x, g, b, eps)[1]),
    "gamma-beta-swapped": lambda x, g, b, eps: (lambda c: (b * c[0] + g, c))(ln_forward(x, g, b, eps)[1]),
    "wrong-return": lambda x, g, b, eps: ln_forward(x, g, b, eps)[0],
}


@pytest.mark.parametrize("mistake", sorted(LN_FORWARD_WRONG))
@pytest.mark.parametrize("seed", SEEDS)
def test_wrong_layernorm_forward_is_diagnosed_and_fails_the_backward_check_too(mistake, seed):
    wrong = LN_FORWARD_WRONG[mistake]
    for layout in ("ND", "NLD"):
        assert _diagnosed(check_layernorm, wrong, seed=seed, layout=layout).mistake == mistake
        e = _diagnosed(check_layernorm_backward, wrong, ln_backward, seed=seed, layout=layout)
        assert e.mistake == mistake, str(e)
        if mistake != "wrong-return":
            assert "Fix layernorm_forward first" in str(e), str(e)


@pytest.mark.parametrize("seed", SEEDS)
def test_statistics_over_the_sequence_or_time_are_named(seed):
    assert _diagnosed(check_layernorm, lambda x, g, b, eps: ln_forward(x, g, b, eps, axes=(1, 2)),
                      seed=seed, layout="NLD").mistake == "statistics-over-sequence"
    assert _diagnosed(check_layernorm, lambda x, g, b, eps: ln_forward(x, g, b, eps, axes=1),
                      seed=seed, layout="NLD").mistake == "statistics-over-time"


LN_BACKWARD_WRONG = {
    "missing-mean-path": lambda d, c: ln_backward(d, c, mean_path=False),
    "missing-variance-path": lambda d, c: ln_backward(d, c, var_path=False),
    "only-direct-path": lambda d, c: ln_backward(d, c, mean_path=False, var_path=False),
    "gamma-factored-out": lambda d, c: ln_backward(d, c, factored=True),
    "sums-over-batch-axis": lambda d, c: ln_backward(d, c, over_batch=True),
    "dbeta-dgamma-swapped": lambda d, c: (lambda r: (r[0], r[2], r[1]))(ln_backward(d, c)),
    "wrong-shape": lambda d, c: (lambda r: (r[0], d * c[0], r[2]))(ln_backward(d, c)),
}


@pytest.mark.parametrize("mistake", sorted(LN_BACKWARD_WRONG))
@pytest.mark.parametrize("layout", ["ND", "NLD"])
@pytest.mark.parametrize("seed", SEEDS)
def test_wrong_layernorm_backward_is_diagnosed(mistake, layout, seed):
    e = _diagnosed(check_layernorm_backward, ln_forward, LN_BACKWARD_WRONG[mistake], seed=seed, layout=layout)
    assert e.mistake == mistake, str(e)


def test_a_backward_that_changes_dout_is_caught():
    def scribbles(dout, cache):
        result = ln_backward(dout.copy(), cache)
        dout *= 2
        return result

    e = _diagnosed(check_layernorm_backward, ln_forward, scribbles, seed=0)
    assert e.mistake == "modified-input" and "`dout`" in str(e), str(e)


# ------------------------------------------------------------ group norm --
def gn_forward(x, gamma, beta, num_groups, eps=1e-5, *, view=None, axes=None, ddof=0, eps_inside=True):
    N, C, H, W = x.shape
    v = x.reshape(N, num_groups, -1) if view is None else view(x, num_groups)
    axes = 2 if axes is None else axes
    mu = v.mean(axis=axes, keepdims=True)
    var = v.var(axis=axes, keepdims=True, ddof=ddof)
    inv = 1.0 / np.sqrt(var + eps) if eps_inside else 1.0 / (np.sqrt(var) + eps)
    xhat = ((v - mu) * inv).reshape(x.shape)
    inv = (inv * np.ones_like(v)).reshape(x.shape)  # whatever the (wrong) view, a cache the backward can read
    return gamma.reshape(1, C, 1, 1) * xhat + beta.reshape(1, C, 1, 1), (xhat, gamma, inv, num_groups)


def gn_backward(dout, cache, *, mean_path=True, var_path=True, factored=False):
    xhat, gamma, inv, G = cache
    N, C = dout.shape[:2]
    g4 = gamma.reshape(1, C, 1, 1)
    dbeta, dgamma = dout.sum(axis=(0, 2, 3)), (dout * xhat).sum(axis=(0, 2, 3))
    g = (dout if factored else dout * g4).reshape(N, G, -1)
    xh, inv = xhat.reshape(N, G, -1), inv.reshape(N, G, -1)
    t = g.copy()
    if mean_path:
        t = t - g.mean(axis=2, keepdims=True)
    if var_path:
        t = t - xh * (g * xh).mean(axis=2, keepdims=True)
    dx = (inv * t).reshape(dout.shape)
    return dx * (g4 if factored else 1.0), dgamma, dbeta


def gn_loops(x, gamma, beta, num_groups, eps=1e-5):
    """Group by group, long double internals."""
    N, C, H, W = x.shape
    K = C // num_groups
    out = np.empty_like(x)
    xl = x.astype(np.longdouble)
    for n in range(N):
        for g in range(num_groups):
            block = xl[n, g * K:(g + 1) * K]
            m = block.sum() / block.size
            v = ((block - m) ** 2).sum() / block.size
            for c in range(g * K, (g + 1) * K):
                out[n, c] = (gamma[c] * (xl[n, c] - m) / np.sqrt(v + eps) + beta[c]).astype(np.float64)
    return out, gn_forward(x, gamma, beta, num_groups, eps)[1]


class GroupNorm:
    def __call__(self, x, gamma, beta, num_groups, eps=1e-5):
        return gn_forward(x, gamma, beta, num_groups, eps)


def interleaved(x, G):
    N, C, H, W = x.shape
    return x.reshape(N, C // G, G, H, W)


@pytest.mark.parametrize("seed", SEEDS)
def test_right_groupnorm_passes_written_several_ways(seed):
    for fwd in (gn_forward, gn_loops, GroupNorm()):
        check_groupnorm(fwd, seed=seed)
        check_groupnorm_backward(fwd, gn_backward, seed=seed)
    check_groupnorm(gn_forward, seed=seed, shape=(2, 6, 3, 2), num_groups=3)


GN_FORWARD_WRONG = {
    "groups-interleaved": lambda x, g, b, G, eps: gn_forward(x, g, b, G, eps, view=interleaved, axes=(1, 3, 4)),
    "groups-along-wrong-axis": lambda x, g, b, G, eps: gn_forward(x, g, b, G, eps,
                                                                  view=lambda a, G: a.reshape(a.shape[0], -1, G), axes=1),
    "statistics-per-pixel": lambda x, g, b, G, eps: gn_forward(x, g, b, G, eps,
                                                               view=lambda a, G: a.reshape(a.shape[0], G, -1, *a.shape[2:]),
                                                               axes=2),
    "statistics-over-batch": lambda x, g, b, G, eps: gn_forward(x, g, b, G, eps, axes=(0, 2)),
    "batch-norm-instead": lambda x, g, b, G, eps: gn_forward(x, g, b, G, eps, view=lambda a, G: a, axes=(0, 2, 3)),
    "layer-norm-instead": lambda x, g, b, G, eps: gn_forward(x, g, b, 1, eps),
    "instance-norm-instead": lambda x, g, b, G, eps: gn_forward(x, g, b, x.shape[1], eps),
    "unbiased-variance": lambda x, g, b, G, eps: gn_forward(x, g, b, G, eps, ddof=1),
    "eps-outside-sqrt": lambda x, g, b, G, eps: gn_forward(x, g, b, G, eps, eps_inside=False),
}


@pytest.mark.parametrize("mistake", sorted(GN_FORWARD_WRONG))
@pytest.mark.parametrize("seed", SEEDS)
def test_wrong_groupnorm_forward_is_diagnosed_and_fails_the_backward_check_too(mistake, seed):
    wrong = GN_FORWARD_WRONG[mistake]
    assert _diagnosed(check_groupnorm, wrong, seed=seed).mistake == mistake
    e = _diagnosed(check_groupnorm_backward, wrong, gn_backward, seed=seed)
    assert e.mistake == mistake and "Fix groupnorm_forward first" in str(e), str(e)


GN_BACKWARD_WRONG = {
    "missing-mean-path": lambda d, c: gn_backward(d, c, mean_path=False),
    "missing-variance-path": lambda d, c: gn_backward(d, c, var_path=False),
    "only-direct-path": lambda d, c: gn_backward(d, c, mean_path=False, var_path=False),
    "gamma-factored-out": lambda d, c: gn_backward(d, c, factored=True),
    "wrong-shape": lambda d, c: (lambda r: (r[0], (d * c[0]).sum(0), r[2]))(gn_backward(d, c)),
}


@pytest.mark.parametrize("mistake", sorted(GN_BACKWARD_WRONG))
@pytest.mark.parametrize("seed", SEEDS)
def test_wrong_groupnorm_backward_is_diagnosed(mistake, seed):
    e = _diagnosed(check_groupnorm_backward, gn_forward, GN_BACKWARD_WRONG[mistake], seed=seed)
    assert e.mistake == mistake, str(e)


def test_not_implemented_is_named_and_a_hidden_seed_is_random_for_the_learner():
    def blank(*a):
        raise NotImplementedError()

    assert _diagnosed(check_layernorm, blank, seed=0).mistake == "not-implemented"
    assert _diagnosed(check_groupnorm_backward, gn_forward, blank, seed=0).mistake == "not-implemented"
    check_groupnorm(gn_forward, seed=HIDDEN)
    check_layernorm_backward(ln_forward, ln_backward, seed=HIDDEN, layout="NLD")


def test_a_right_backward_that_crashes_on_a_wrong_forwards_cache_names_the_forward():
    """Interleaved groups leave inv_std of shape (N, 1, G, 1): the right backward then raises; the learner
    is told the forward's mistake, here and through the grader's record."""
    import json

    from bncheck import probes
    from grading.judge import _judged
    from grading.plan import Check

    def fwd(x, gamma, beta, num_groups, eps=1e-5):
        N, C, H, W = x.shape
        xg = x.reshape(N, C // num_groups, num_groups, H * W)
        mu, var = xg.mean(axis=(1, 3), keepdims=True), xg.var(axis=(1, 3), keepdims=True)
        inv_std = 1.0 / np.sqrt(var + eps)
        xhat = ((xg - mu) * inv_std).reshape(x.shape)
        return gamma.reshape(1, C, 1, 1) * xhat + beta.reshape(1, C, 1, 1), (xhat, gamma, inv_std, num_groups)

    def bwd(dout, cache):
        xhat, gamma, inv_std, G = cache
        N, C, H, W = dout.shape
        d = (dout * gamma.reshape(1, C, 1, 1)).reshape(N, G, -1)
        xg = xhat.reshape(N, G, -1)
        dx = inv_std * (d - d.mean(axis=2, keepdims=True) - xg * (d * xg).mean(axis=2, keepdims=True))
        return dx.reshape(dout.shape), (dout * xhat).sum(axis=(0, 2, 3)), dout.sum(axis=(0, 2, 3))

    e = _diagnosed(check_groupnorm_backward, fwd, bwd, seed=0)
    assert e.mistake == "groups-interleaved" and "Fix groupnorm_forward first" in str(e), str(e)
    text = probes.grader_call("groupnorm_backward", (fwd, bwd), json.dumps({"seed": 0}))
    assert json.loads(text)["failure"][0] == "raised", text
    check = Check("test-gn-backward", 0, "groupnorm_backward", ("fwd", "bwd"), json.dumps({"seed": 0}), False)
    mistake, message = _judged(check, text, None)
    assert mistake == "groups-interleaved" and "Fix groupnorm_forward first" in message, (mistake, message)
    # a right forward and a crashing backward: the backward's own failure stands
    text = probes.grader_call("groupnorm_backward", (gn_forward, bwd), json.dumps({"seed": 0}))
    assert _judged(check, text, None)[0] in ("raised", "wrong-values"), text

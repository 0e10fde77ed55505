"""Linear attention and Performer (FAVOR+) kernels for `MultiHeadAttention`.

Linear attention replaces softmax(q.k) by a kernel phi(q).phi(k), so the sum
over keys can be taken first (Su Jianlin, "Transformer升级之路：从Performer到线性
Attention"; Katharopoulos et al. 2020; Choromanski et al. 2021):

    o_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j)

feature maps:
  'elu'       phi(x) = elu(x) + 1
  'relu'      phi(x) = relu(x)
  'softmax'   softmax of q over its features, softmax of k over the keys (the
              "softmax on each axis" form, Shen et al. 2021): o_i = sum_d
              softmax(q_i)_d sum_j softmax_j(k_jd) v_j, no denominator
  'performer' positive random features of softmax attention (FAVOR+):
              phi(x) = exp(W x - |x|^2 / 2) / sqrt(m) with W [m, d] orthogonal
              Gaussian rows, so E[phi(q).phi(k)] = exp(q.k)

Masks are two key sets [batch, n] instead of a [q, k] matrix (which linear
attention never forms): `global_keys` every query sees (an encoder's real
tokens, a UniLM source) and `causal_keys` seen by the queries at or after
them (a causal LM, a UniLM target). The causal sums are prefix sums computed
chunk by chunk (memory O(n * chunk + n / chunk * d^2), no loop, any backend).
A recurrent `state` (the sums over the keys of earlier calls) replaces the
key/value cache in incremental decoding: a constant size per layer.

>>> import numpy as np
>>> from keras import ops
>>> rng = np.random.RandomState(0)
>>> q, k, v = (rng.normal(size=(1, 6, 2, 4)).astype("float32") for _ in range(3))
>>> o, state = linear_attention(q, k, v, "elu", causal_keys=np.ones((1, 6), bool))
>>> phi = lambda x: np.where(x > 0, x + 1, np.exp(x))
>>> s = np.einsum("ihd,jhd->hij", phi(q[0]), phi(k[0])) * np.tri(6)[None]
>>> ref = np.einsum("hij,jhe->ihe", s, v[0]) / s.sum(-1).T[..., None]
>>> bool(np.allclose(ops.convert_to_numpy(o)[0], ref, atol=1e-5))
True
"""

import math

import keras
import numpy as np
from keras import ops

FEATURE_MAPS = ("elu", "relu", "softmax", "performer")

#: the positions summed at once inside the causal prefix sums
CHUNK = 64

_TINY = 1e-30


def orthogonal_projection(num_features, dim, seed=0):
    """FAVOR+'s projection [num_features, dim]: blocks of orthogonal rows (QR of
    a Gaussian matrix) scaled by the norms of Gaussian rows, float32, drawn with
    NumPy so a seed gives the same matrix on every backend.

    >>> w = orthogonal_projection(6, 4, seed=1)
    >>> w.shape, bool(abs(w[:4] @ w[:4].T - np.diag(np.diag(w[:4] @ w[:4].T))).max() < 1e-5)
    ((6, 4), True)
    """
    rng = np.random.RandomState(seed)
    blocks = []
    for _ in range(-(-num_features // dim)):
        q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        blocks.append(q.T)
    rows = np.concatenate(blocks, 0)[:num_features]
    norms = np.linalg.norm(rng.normal(size=(num_features, dim)), axis=1)
    return (rows * norms[:, None]).astype("float32")


def random_projection(num_features, dim, seed):
    """The same distribution as `orthogonal_projection`, drawn on the device
    (a redrawn projection in training; `seed` a keras.random.SeedGenerator)."""
    blocks = []
    for _ in range(-(-num_features // dim)):
        q, _ = ops.qr(keras.random.normal((dim, dim), seed=seed))
        blocks.append(ops.transpose(q))
    rows = ops.concatenate(blocks, 0)[:num_features]
    norms = ops.norm(keras.random.normal((num_features, dim), seed=seed), axis=1)
    return rows * norms[:, None]


def performer_features(x, projection, is_query):
    """exp(W x - |x|^2/2) up to factors that cancel in the attention ratio: a
    query's own max (and its |q|^2/2), for keys the constant max_i |w_i|^2 / 2,
    which bounds every key feature by 1 (W x - |x|^2/2 <= |w|^2/2)."""
    wx = ops.einsum("bnhd,md->bnhm", x, projection)
    if is_query:
        return ops.exp(wx - ops.max(wx, axis=-1, keepdims=True))
    bound = 0.5 * ops.max(ops.sum(ops.square(projection), axis=-1))
    return ops.exp(wx - 0.5 * ops.sum(ops.square(x), axis=-1, keepdims=True) - bound)


def _feature(x, kind, projection=None, is_query=False):
    if kind == "elu":
        return ops.elu(x) + 1.0
    if kind == "relu":
        return ops.relu(x)
    if kind == "performer":
        return performer_features(x, projection, is_query)
    raise ValueError(f"unknown feature map {kind!r}; expected one of {FEATURE_MAPS}")


def causal_sums(qf, kf, v, chunk=CHUNK):
    """sum_{j <= i} (qf_i . kf_j) v_j for every i: [b, n, h, m] x [b, n, h, m] x
    [b, n, h, e] -> [b, n, h, e], chunk by chunk (exact, O(n) memory).

    >>> rng = np.random.RandomState(0)
    >>> q, k, v = (rng.rand(2, 7, 1, 3).astype("float32") for _ in range(3))
    >>> s = np.einsum("bihd,bjhd->bhij", q, k) * np.tri(7)
    >>> ref = np.einsum("bhij,bjhe->bihe", s, v)
    >>> bool(np.allclose(ops.convert_to_numpy(causal_sums(q, k, v, chunk=3)), ref, atol=1e-5))
    True
    """
    n_static = qf.shape[1]
    if n_static is not None:
        chunk = max(1, min(chunk, n_static))
    b, n = ops.shape(qf)[0], ops.shape(qf)[1]
    h, m, e = qf.shape[2], qf.shape[3], v.shape[3]
    pad = (chunk - n % chunk) % chunk
    widths = [[0, 0], [0, pad], [0, 0], [0, 0]]
    qc, kc, vc = (ops.pad(t, widths) for t in (qf, kf, v))
    qc = ops.reshape(qc, (b, -1, chunk, h, m))
    kc = ops.reshape(kc, (b, -1, chunk, h, m))
    vc = ops.reshape(vc, (b, -1, chunk, h, e))
    states = ops.einsum("bclhm,bclhe->bchme", kc, vc)
    earlier = ops.cumsum(states, axis=1) - states  # the chunks before each chunk
    inter = ops.einsum("bclhm,bchme->bclhe", qc, earlier)
    scores = ops.einsum("bclhm,bcshm->bchls", qc, kc)
    tri = ops.convert_to_tensor(np.tri(chunk, dtype="float32"))
    intra = ops.einsum("bchls,bcshe->bclhe", scores * tri, vc)
    return ops.reshape(inter + intra, (b, -1, h, e))[:, :n]


def empty_state(batch_size, heads, features, head_size, feature_map, dtype="float32"):
    """The zero recurrent state of one layer: (S [b, h, m, e], z [b, h, m], and for
    the 'softmax' map the running max of the keys [b, h, m])."""
    state = (
        ops.zeros((batch_size, heads, features, head_size), dtype=dtype),
        ops.zeros((batch_size, heads, features), dtype=dtype),
    )
    if feature_map == "softmax":
        state += (ops.full((batch_size, heads, features), -1e30, dtype=dtype),)
    return state


def linear_attention(
    q,
    k,
    v,
    feature_map,
    global_keys=None,
    causal_keys=None,
    state=None,
    projection=None,
    rotary=None,
    chunk=CHUNK,
):
    """Linear attention of q [b, n, h, d] over k, v [b, n, h, d|e]; returns
    (o [b, n, h, e], new state). Keys in neither set are not attended; both
    None: every key, non-causally. `state` holds earlier keys (seen by every
    query). `rotary(x)`: RoPE on the features of the numerator (RoFormer's
    linear form; the denominator stays unrotated). Computed in float32."""
    dtype = v.dtype
    q, k, v = (ops.cast(t, "float32") for t in (q, k, v))
    if feature_map == "performer" and rotary is not None:
        q, k, rotary = rotary(q), rotary(k), None  # approximate RoFormer's softmax attention
    rot = (lambda x: x) if rotary is None else rotary
    if global_keys is None and causal_keys is None:
        global_keys = ops.ones(ops.shape(k)[:2], dtype="bool")
    g = None if global_keys is None else ops.cast(global_keys, "float32")[:, :, None, None]
    c = None if causal_keys is None else ops.cast(causal_keys, "float32")[:, :, None, None]
    real = g if c is None else (c if g is None else g + c)

    if feature_map == "softmax":
        qf = ops.softmax(q, axis=-1)
        top = ops.max(ops.where(real > 0, k, -1e30), axis=1)  # [b, h, m]
        if state is not None:
            top = ops.maximum(top, state[2])
        kf = ops.exp(ops.minimum(k - top[:, None], 0.0)) * real
    else:
        qf = _feature(q, feature_map, projection, is_query=True)
        kf = _feature(k, feature_map, projection) * real
    kr = rot(kf)  # the numerator's (possibly rotated) key features
    S = z = None
    if state is not None:
        S, z = state[0], state[1]
        if feature_map == "softmax":  # rescale the sums to the new running max
            shift = ops.exp(state[2] - top)
            S, z = S * shift[..., None], z * shift
    if g is not None:
        S = _add(S, ops.einsum("bnhm,bnhe->bhme", kr * g, v))
        z = _add(z, ops.sum(kf * g, axis=1))

    if feature_map == "softmax":
        # o_i = sum_d softmax(q_i)_d (S_d + prefix_i(e v)_d) / (z_d + prefix_i(e)_d)
        denom = ops.zeros_like(qf) if z is None else z[:, None] + ops.zeros_like(qf)
        if c is not None:
            denom = denom + ops.cumsum(kf * c, axis=1)
        qr = rot(qf / ops.maximum(denom, _TINY))
        o = ops.zeros_like(v) if S is None else ops.einsum("bnhm,bhme->bnhe", qr, S)
        if c is not None:
            o = o + causal_sums(qr, kr * c, v, chunk)
    else:
        qr = rot(qf)
        num = ops.zeros_like(v) if S is None else ops.einsum("bnhm,bhme->bnhe", qr, S)
        den = ops.zeros_like(v[..., 0]) if z is None else ops.einsum("bnhm,bhm->bnh", qf, z)
        if c is not None:
            num = num + causal_sums(qr, kr * c, v, chunk)
            den = den + causal_sums(qf, kf * c, ops.ones_like(v[..., :1]), chunk)[..., 0]
        o = ops.where(den[..., None] > 0, num / ops.maximum(den, _TINY)[..., None], 0.0)

    new_state = None
    if state is not None:
        if c is not None:
            S = _add(S, ops.einsum("bnhm,bnhe->bhme", kr * c, v))
            z = _add(z, ops.sum(kf * c, axis=1))
        new_state = (S, z, top) if feature_map == "softmax" else (S, z)
    return ops.cast(o, dtype), new_state


def _add(a, b):
    return b if a is None else a + b


def log_ratio(length, training_length):
    """log(n) / log(n_train): the entropy-invariant factor of the attention scale."""
    return ops.log(ops.maximum(length, 1.0)) / math.log(training_length)

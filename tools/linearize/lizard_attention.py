"""Training-time forms of Lizard attention (shared/spec/lizard-model.md), for whole sequences.

Shapes: B batch, H query heads, T tokens, D head dim, F feature dim (feature maps give 2F).
Everything works on query heads: keys and values are repeated per query head by the caller.

Gated linear attention (GLA), three forms that compute the same numbers:
- gla_recurrent: the spec's token-by-token recurrence S = g S + fk v^T, z = g z + fk. Slow; the
  oracle the tests hold the chunked forms to.
- gla_chunked(folded=False): chunks of C tokens; inside a chunk the decay exp(b_t - b_s) is an
  explicit fp32 [C, C] matrix multiplied into fq fk^T; across chunks a carried state.
- gla_chunked(folded=True): the paper's hardware-aware form. The log of the cumulative gate is
  folded into the exponential feature maps, fq_t e^{b_t - c} and fk_s e^{c - b_s}, so the
  intra-chunk scores are one plain matrix product (bf16 on the GPU) with no [C, C] decay matrix.
  c is the middle of the chunk's log-decay range, which keeps both factors within e^{+-|b|/2}
  (a chunk whose decay is too large for that is computed in the plain form instead).
The normaliser z rides along as a column of ones appended to v.

Window attention: exact softmax over the last w tokens (the current one included) with m
meta-memory logits that only add to the denominator, computed block-wise (blocks of w queries
see 2w keys), so memory grows linearly with T.
"""
import math

import torch
import torch.nn.functional as F

EPS = 1e-6  # the spec's GLA denominator epsilon


def log_feature_map(x, weight, bias):
    """log phi(x): x [B,H,T,D], weight [H,D,F], bias [H,F] -> [B,H,T,2F] =
    [log_softmax(xW+b), log_softmax(-(xW+b))]."""
    a = torch.einsum("bhtd,hdf->bhtf", x, weight) + bias[None, :, None, :]
    return torch.cat([F.log_softmax(a, dim=-1), F.log_softmax(-a, dim=-1)], dim=-1)


def _with_ones(v):
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)


def _finish(y_aug, normalize):
    """Splits numerator and normaliser (last column); divides when the model normalises."""
    num, den = y_aug[..., :-1], y_aug[..., -1:]
    return num / (den + EPS) if normalize else num


def gla_recurrent(log_fq, log_fk, v, log_gate, normalize, state=None):
    """The spec's recurrence. log_fq/log_fk [B,H,T,2F], v [B,H,T,D], log_gate [B,H,T] (log
    gamma). state: optional (S [B,H,2F,D+1]) carried in; returns (y [B,H,T,D], state)."""
    fq, fk, va = log_fq.exp(), log_fk.exp(), _with_ones(v)
    b, h, t, f2 = fq.shape
    s = state if state is not None else fq.new_zeros(b, h, f2, va.shape[-1])
    ys = []
    for i in range(t):
        g = log_gate[:, :, i].exp()[..., None, None]
        s = g * s + fk[:, :, i, :, None] * va[:, :, i, None, :]
        ys.append(torch.einsum("bhf,bhfd->bhd", fq[:, :, i], s))
    return _finish(torch.stack(ys, dim=2), normalize), s


def gla_chunked(log_fq, log_fk, v, log_gate, normalize, chunk=64, folded=True,
                dtype=torch.float32):
    """Chunk-parallel GLA (same arguments as gla_recurrent, no state in or out). folded picks
    the hardware-aware form; dtype is the matrix products' input type (the state and the
    decays stay fp32)."""
    b, h, t, f2 = log_fq.shape
    pad = (-t) % chunk
    if pad:  # padding at the end: later tokens never reach earlier outputs
        log_fq, log_fk, v = (F.pad(x, (0, 0, 0, pad)) for x in (log_fq, log_fk, v))
        log_gate = F.pad(log_gate, (0, pad))
    n = (t + pad) // chunk
    lq = log_fq.float().reshape(b, h, n, chunk, f2)
    lk = log_fk.float().reshape(b, h, n, chunk, f2)
    va = _with_ones(v.float()).reshape(b, h, n, chunk, -1)
    cum = log_gate.float().reshape(b, h, n, chunk).cumsum(-1)  # b_t: log decay since chunk start
    total = cum[..., -1:]                                       # B: the chunk's whole decay
    mask = torch.ones(chunk, chunk, dtype=torch.bool, device=lq.device).tril()
    # The folded factors reach e^{|B|/2}: past fp32's range (e^88) when a chunk's gates nearly
    # close for all its tokens; such a call takes the plain form, which has no such limit.
    if folded and bool((total > -170).all()):
        centre = total / 2
        q_tilde = (lq + (cum - centre)[..., None]).exp().to(dtype)
        k_tilde = (lk + (centre - cum)[..., None]).exp().to(dtype)
        scores = (q_tilde @ k_tilde.transpose(-1, -2)).float()
    else:
        decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(~mask, -math.inf).exp()
        scores = (lq.exp().to(dtype) @ lk.exp().to(dtype).transpose(-1, -2)).float() * decay
    scores = scores.masked_fill(~mask, 0.0)
    y = (scores.to(dtype) @ va.to(dtype)).float()
    # Across chunks: the state entering chunk j is sum over earlier chunks i of
    # e^{B_{i+1} + ... + B_{j-1}} U_i with U_i = sum_s e^{B_i - b_s} fk_s va_s^T: one product
    # with an [n, n] matrix of chunk decays (all exponents <= 0) instead of a loop over chunks.
    k_hat = (lk + (total - cum)[..., None]).exp().to(dtype)
    updates = (k_hat.transpose(-1, -2) @ va.to(dtype)).float()  # [b,h,n,2F,D+1]
    ends = total[..., 0].cumsum(-1)                                # L_j = B_0 + ... + B_j
    starts = ends - total[..., 0]                                  # L_{j-1}
    earlier = torch.ones(n, n, dtype=torch.bool, device=lq.device).tril(-1)
    chunk_decay = (starts[..., :, None] - ends[..., None, :]).masked_fill(~earlier, -math.inf)
    states = torch.einsum("bhji,bhixy->bhjxy", chunk_decay.exp(), updates)
    q_hat = (lq + cum[..., None]).exp().to(dtype)
    y = y + (q_hat @ states.to(dtype)).float()
    y = y.reshape(b, h, n * chunk, -1)[:, :, :t]
    return _finish(y, normalize)


def window_attention(q, k, v, meta_logits, window):
    """q, k, v [B,H,T,D] (RoPE already applied where the model uses it), meta_logits [H,m]:
    softmax over keys j in [t-w+1, t] plus the m meta logits in the denominator."""
    b, h, t, d = q.shape
    w = window
    pad = (-t) % w
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    n = (t + pad) // w
    qb = q.reshape(b, h, n, w, d)
    # Keys of block j: blocks j-1 and j (block -1 is zeros and masked).
    kp = F.pad(k, (0, 0, w, 0)).reshape(b, h, n + 1, w, d)
    vp = F.pad(v, (0, 0, w, 0)).reshape(b, h, n + 1, w, d)
    kb = torch.cat([kp[:, :, :-1], kp[:, :, 1:]], dim=3)  # [b,h,n,2w,d]
    vb = torch.cat([vp[:, :, :-1], vp[:, :, 1:]], dim=3)
    scores = (qb @ kb.transpose(-1, -2)).float() / math.sqrt(d)  # [b,h,n,w,2w]
    qpos = torch.arange(w, device=q.device)[:, None] + w         # query i sits at w + i
    kpos = torch.arange(2 * w, device=q.device)[None, :]
    block = torch.arange(n, device=q.device)[:, None, None]
    allowed = (kpos <= qpos) & (kpos > qpos - w) & (block * w + kpos - w >= 0)
    scores = scores.masked_fill(~allowed, -math.inf)
    m = meta_logits.shape[-1]
    meta = meta_logits.float()[None, :, None, None, :].expand(b, h, n, w, m)
    probs = torch.softmax(torch.cat([scores, meta], dim=-1), dim=-1)[..., :2 * w]
    y = probs.to(vb.dtype) @ vb
    return y.reshape(b, h, n * w, d)[:, :, :t]

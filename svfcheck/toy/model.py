"""The toy model of docs/math.md §1, vectorised over *instances* (leading axis ``I``).

Each instance ``i`` has its own :class:`~svfcheck.toy.config.ToyConfig` and seed. Instances in
one :class:`ToyModel` must share ``d``, ``m``, ``n_keys``, ``strengths`` and ``rope`` (the
*group* shape); ``n`` and ``d_h`` may differ and are **zero-padded and masked** to the group's
maxima (padded features are never present, are excluded from L_rec and their columns of W stay
exactly zero; padded head columns stay exactly zero). p, λ and Λ are per-instance tensors.
:func:`svfcheck.toy.train.train_many` groups a list of configs by shape automatically.

Per-instance independence: instance ``i`` draws its initial weights and all its data from its
own ``numpy.random.Generator(PCG64(seed_i))`` (≈2× faster than torch's CPU generator), at its
*own* (unpadded) shape, so its random stream does not depend on the other instances of the batch. Losses are summed over instances,
so each instance's gradient is its own; AdamW acts elementwise. An instance therefore follows
the same trajectory in any batch up to floating-point re-association inside the batched matmuls
(tested in ``tests/toy``).

Forward pass for a query token with strengths ``f_r`` and keys ``f_{s_1..s_m}``:
``x = W f``; ``f' = ReLU(Wᵀx + b)``; ``L_rec = mean_tokens ‖f − f'‖²`` over the queries *and*
keys of the step **(choice)**; logits ``ℓ_j = x_rᵀ W_Q W_Kᵀ x_{s_j}`` (no scale); target
``ℓ*_j = f_rᵀ Λ f_{s_j}``; ``L_attn = mean_queries CE(softmax ℓ*, softmax ℓ)``;
``L = L_rec + λ L_attn``. With a ``teacher`` (I,d,d) the target is ``x_rᵀ M_T x_s`` instead
(the student–teacher setting of docs/math.md §2.1, used by App. C.3).

Sampling **(choice)**: one uniform ``u ~ U[0,1)`` per feature gives both the Bernoulli(p)
presence ``u < p`` and the strength ``u/p`` (which is U[0,1) given presence) — the same
distribution as two draws at half the random numbers. ``u`` is numpy's float32 uniform
(24 random bits; the two halves of each 64-bit draw in turn), drawn per step straight into the
batch without RoPE (with RoPE: raw 64-bit draws several steps at a time, then positions; the
same numbers); a step's strengths are laid out feature-major
(``Batch.fT``, N × tokens), and the trainer uses a hand-derived gradient in that layout
(:meth:`ToyModel.losses_and_grads`; :meth:`ToyModel.losses` + autograd is the reference).

Initialisation **(choice)**: W, W_Q, W_K Xavier-normal (std √(2/(fan_in+fan_out)) at the
instance's own shape), b = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .config import ToyConfig

__all__ = ["ToyModel", "Batch", "group_compatible"]


def group_compatible(a: ToyConfig, b: ToyConfig) -> bool:
    """Whether two configs can share one batched model (padding handles n and d_h; RoPE
    instances must also share d_h, whose bands define the rotation)."""
    same = (a.d, a.m, a.n_keys, a.strengths, a.rope) == (b.d, b.m, b.n_keys, b.strengths, b.rope)
    return same and (a.rope is None or a.d_h == b.d_h)


@dataclass
class Batch:
    """Strengths of one step: ``fq`` (I, Q, N), ``fk`` (I, Q, m, N); positions for RoPE.

    ``fT`` (I, N, T), T = Q(1+m), is the feature-major array that :meth:`ToyModel.draw` fills
    (``fq``/``fk`` are views of it): tokens ``0..Q−1`` are the queries and token ``Q + j·Q + q``
    is key ``j`` of query ``q``. ``f`` (I, T, N) is an optional token-major copy (queries, then
    the keys of query 0, of query 1, ...)."""

    fq: torch.Tensor
    fk: torch.Tensor
    pos_q: torch.Tensor | None = None  # (I, Q)
    pos_k: torch.Tensor | None = None  # (I, Q, m)
    f: torch.Tensor | None = None
    fT: torch.Tensor | None = None


class ToyModel(torch.nn.Module):
    """Batched toy model. Parameters: ``W`` (I,d,N), ``b`` (I,N), ``WQ``/``WK`` (I,d,H)."""

    def __init__(
        self,
        configs: Sequence[ToyConfig],
        seeds: Sequence[int],
        device: str | torch.device = "cpu",
        features: Sequence[np.ndarray | None] | None = None,
        teacher: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        configs = list(configs)
        seeds = [int(s) for s in seeds]
        if not configs:
            raise ValueError("need at least one instance")
        if len(configs) != len(seeds):
            raise ValueError(f"{len(configs)} configs but {len(seeds)} seeds")
        c0 = configs[0]
        for c in configs[1:]:
            if not group_compatible(c0, c):
                raise ValueError(
                    "instances of one ToyModel must share d, m, n_keys, strengths and rope; "
                    f"got {c0.name} and {c.name} (use train_many, which groups by shape)"
                )
        if c0.rope is not None and len({c.d_h for c in configs}) > 1:
            raise ValueError("RoPE instances of one ToyModel must share d_h (the rotation bands depend on it)")
        self.configs = configs
        self.seeds = seeds
        self.device = torch.device(device)
        I = len(configs)
        N = max(c.n for c in configs)
        H = max(c.d_h for c in configs)
        d, m = c0.d, c0.m
        self.I, self.N, self.H, self.d, self.m = I, N, H, d, m
        self.Q = c0.n_queries
        self.rope = c0.rope
        self.binary = c0.strengths == "binary"

        self.gens: list[np.random.Generator] = []
        W = torch.zeros(I, d, N, dtype=torch.float64)
        WQ = torch.zeros(I, d, H, dtype=torch.float64)
        WK = torch.zeros(I, d, H, dtype=torch.float64)
        for i, (c, s) in enumerate(zip(configs, seeds)):
            g = np.random.Generator(np.random.PCG64(s))
            Wi = torch.from_numpy(g.standard_normal((d, c.n)) * math.sqrt(2.0 / (d + c.n)))
            if features is not None and features[i] is not None:
                Wi = torch.as_tensor(np.asarray(features[i], dtype=np.float64))
                if Wi.shape != (d, c.n):
                    raise ValueError(f"features[{i}] must have shape (d, n) = ({d}, {c.n}); got {tuple(Wi.shape)}")
            W[i, :, : c.n] = Wi
            WQ[i, :, : c.d_h] = torch.from_numpy(g.standard_normal((d, c.d_h)) * math.sqrt(2.0 / (d + c.d_h)))
            WK[i, :, : c.d_h] = torch.from_numpy(g.standard_normal((d, c.d_h)) * math.sqrt(2.0 / (d + c.d_h)))
            self.gens.append(g)
        f32 = dict(dtype=torch.float32, device=self.device)
        self.W = torch.nn.Parameter(W.to(**f32))
        self.b = torch.nn.Parameter(torch.zeros(I, N, **f32))
        self.WQ = torch.nn.Parameter(WQ.to(**f32))
        self.WK = torch.nn.Parameter(WK.to(**f32))

        fm = torch.zeros(I, N, **f32)
        hm = torch.zeros(I, H, **f32)
        Lam = torch.zeros(I, N, N, **f32)
        for i, c in enumerate(configs):
            fm[i, : c.n] = 1
            hm[i, : c.d_h] = 1
            for a, b_, v in c.pairs:
                Lam[i, a, b_] = v
        self.register_buffer("feat_mask", fm)
        self.register_buffer("head_mask", hm)
        self.register_buffer("Lam", Lam)
        self.register_buffer("p", torch.tensor([c.p for c in configs], **f32))
        self.register_buffer("lam", torch.tensor([c.lam for c in configs], **f32))
        self.register_buffer("p_neg_scaled", -self.p * 2.0**24)
        self.register_buffer("p_neg", -self.p)
        if self.rope is not None:
            theta = torch.tensor(self.rope.theta(H), **f32)  # (H/2,)
            self.register_buffer("theta", theta)
            P = torch.zeros(I, len(self.rope.positional), 4, **f32)
            for i in range(I):
                for j, (a, b_, v, band) in enumerate(self.rope.positional):
                    P[i, j] = torch.tensor([a, b_, v, band], dtype=torch.float32)
            self.register_buffer("positional", P)
        if teacher is not None:
            T_ = torch.as_tensor(np.asarray(teacher, dtype=np.float32), device=self.device)
            if T_.shape != (I, d, d):
                raise ValueError(f"teacher must have shape (I, d, d) = ({I}, {d}, {d}); got {tuple(T_.shape)}")
            self.register_buffer("teacher", T_)
        else:
            self.teacher = None
        self._buf: list = []
        self._ws: dict[str, torch.Tensor] = {}  # reused work arrays (see next_batch, losses_and_grads)
        self._ws_views: dict[tuple, torch.Tensor] = {}  # views of them by (name, shape) (_work)
        self._p_neg_np = self.p_neg.cpu().numpy().copy()  # −p as float32, for _draw_strengths

    # ---- data ---------------------------------------------------------------------------
    _RAW_BUDGET = 1 << 22  # raw random numbers held at once (16 MB): bounds a chunk for large batches

    def _draw_raw(self, steps: int):
        """Raw 32-bit draws (I, steps, N, T) as an int32 tensor (zeros in padded features) and
        RoPE positions (I, steps, T). Instance i consumes ``steps·n_i·T`` uint32 draws from its
        own generator, step by step, feature-major: exactly the draws behind
        ``g.random(dtype=float32)`` (numpy's float32 is ``(uint32 >> 8)·2⁻²⁴``), taken 64 bits at
        a time (``random_raw``, ≈2× faster)."""
        I, N, Q, m = self.I, self.N, self.Q, self.m
        T = Q * (1 + m)
        padded = any(c.n != N for c in self.configs)
        raw = (torch.zeros if padded else torch.empty)((I, steps, N, T), dtype=torch.int32)
        rawn = raw.numpy()
        pos = np.zeros((I, steps, T), dtype=np.int64) if self.rope is not None else None
        for i, (c, g) in enumerate(zip(self.configs, self.gens)):
            count = steps * c.n * T
            if (c.n * T) % 2 == 0:
                r32 = g.bit_generator.random_raw(count // 2).view(np.int32).reshape(steps, c.n, T)
            else:  # odd per-step count: let numpy buffer the spare half exactly as g.random would
                u = g.random((steps, c.n, T), dtype=np.float32)
                r32 = (u * np.float32(2.0**24)).astype(np.int32) << 8  # same 24 bits, raw layout
            if c.n == N:
                rawn[i] = r32
            else:
                rawn[i, :, : c.n] = r32
            if pos is not None:
                pos[i] = g.integers(self.rope.context, size=(steps, T))
        return raw, (None if pos is None else torch.from_numpy(pos))

    def _strengths(self, raw: torch.Tensor) -> torch.Tensor:
        """Strengths float32 from raw draws (same shape): ``u = (raw >>> 8)·2⁻²⁴`` ~ U[0,1);
        uniform: presence ``u < p``, strength ``u/p``; binary: ``1[u < p]``. Written with in-place
        ops and ``threshold`` (this CPU build's boolean-mask ops are ~10× slower than arithmetic)."""
        k = (raw >> 8).bitwise_and_(0xFFFFFF).to(torch.float32)  # exact integers < 2^24
        if self.binary:
            return (k.mul_(2.0**-24) < self.p[:, None, None]).float()
        # u/p = k/(p·2^24) exactly (power-of-two scaling commutes with rounding); negate to use
        # threshold (keeps x > −1, i.e. u < p, zeroes the rest), then negate back: exact.
        y = k.div_(self.p_neg_scaled[:, None, None])
        torch.nn.functional.threshold_(y, -1.0, 0.0)
        return y.neg_()

    def _fill_draws(self, out: np.ndarray, div: np.ndarray, pad: float) -> None:
        """Write, for each instance i, the ``u/div[i]`` (float32, correctly rounded) of its next
        ``n_i·T`` float32 uniforms ``u`` into ``out[i, :n_i]`` (feature-major) and ``pad`` into its
        padded rows. The uniforms are those of ``g.random(dtype=float32)``, i.e. ``u = k·2⁻²⁴``
        with ``k = uint32 >> 8``, numpy serving the 32-bit draws as the low then the high half of
        each 64-bit word (see :meth:`_draw_raw`). For an even ``n_i·T`` the words are taken with
        ``random_raw`` (≈2× faster per number than ``g.random(float32)``) and ``k/(div·2²⁴)`` is
        computed straight from the integers in one numpy pass (the uint32 → float32 cast of
        ``k < 2²⁴`` is exact, and ``k/(div·2²⁴)`` is the same real as ``u/div``, so both are the
        same correctly rounded float32). For an odd count ``g.random`` is used, so that numpy
        buffers the spare half-word exactly as before (``random_raw`` would skip it)."""
        T = self.Q * (1 + self.m)
        N = self.N
        for i, (c, g) in enumerate(zip(self.configs, self.gens)):
            dst = out[i] if c.n == N else out[i, : c.n]  # leading rows: contiguous
            if (c.n * T) % 2 == 0:
                k = g.bit_generator.random_raw(c.n * T // 2).view(np.uint32)
                np.right_shift(k, 8, out=k)
                np.divide(k.reshape(c.n, T), div[i] * np.float32(2.0**24), out=dst, dtype=np.float32,
                          casting="unsafe")
            else:
                g.random(dtype=np.float32, out=dst)
                if div[i] != 1:
                    np.divide(dst, div[i], out=dst)
            if c.n != N:
                out[i, c.n:] = pad

    def _draw_uniform(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """One step's uniforms ``u`` (I, N, T) float32 (zeros in padded features), each instance's
        ``n_i·T`` numbers from its own generator: bit for bit ``g.random(dtype=float32)`` (tested),
        written straight into ``out`` (a CPU buffer) if given. Without RoPE the numbers are
        exactly those of :meth:`_draw_raw` for an even ``n_i·T`` (nothing else draws from the
        generator between steps), so both paths give the same stream. The trainer uses
        :meth:`_draw_strengths`, which makes the strengths from the same numbers."""
        u = out if out is not None else torch.empty((self.I, self.N, self.Q * (1 + self.m)), dtype=torch.float32)
        self._fill_draws(u.numpy(), np.ones(self.I, dtype=np.float32), 0.0)
        return u

    def _draw_strengths(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """One step's strengths (I, N, T) from the uniforms of :meth:`_draw_uniform`, bit for bit
        ``_strengths_from_uniform(_draw_uniform())`` (and hence :meth:`_strengths` of the raw
        draws) in fewer passes: numpy writes ``u/(−p)`` (= ``k/(−p·2²⁴)``) directly from the
        integers, then ``threshold`` and a negation as in :meth:`_strengths_from_uniform` (padded
        rows are written −0 so that they end as +0, as before). ``out``: a CPU buffer to fill."""
        I, N, T = self.I, self.N, self.Q * (1 + self.m)
        y = out if out is not None else torch.empty((I, N, T), dtype=torch.float32)
        if self.binary:
            self._fill_draws(y.numpy(), np.ones(I, dtype=np.float32), 0.0)
            return y.copy_(y < self.p.cpu()[:, None, None])
        self._fill_draws(y.numpy(), self._p_neg_np, -0.0)
        torch.nn.functional.threshold_(y, -1.0, 0.0)
        return y.neg_()

    def _strengths_from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        """:meth:`_strengths` from the uniforms themselves, in place: ``u/(−p)`` is bit for bit
        ``k/(−p·2²⁴)`` with ``u = k·2⁻²⁴`` (both the correctly rounded float32 of the same real),
        and the presence test is the same thresholding of that quotient. (The reference for
        :meth:`_draw_strengths`.)"""
        if self.binary:
            return (u < self.p[:, None, None]).float()
        y = u.div_(self.p_neg[:, None, None])
        torch.nn.functional.threshold_(y, -1.0, 0.0)
        return y.neg_()

    def _batch(self, raw: torch.Tensor | None, pos: torch.Tensor | None, reuse: bool = False) -> Batch:
        I, N, Q, m = self.I, self.N, self.Q, self.m
        if raw is None:  # no RoPE: draw this step's strengths now (cache-hot for the step)
            buf = None
            if reuse:
                buf = self._ws.get("batch")
                if buf is None:
                    buf = self._ws["batch"] = torch.zeros((I, N, Q * (1 + m)), dtype=torch.float32)
            fT = self._draw_strengths(buf).to(self.device)
        else:
            fT = self._strengths(raw.to(self.device)).contiguous()  # (I, N, T)
        fq = fT[:, :, :Q].transpose(1, 2)
        fk = fT[:, :, Q:].reshape(I, N, m, Q).permute(0, 3, 2, 1)
        b = Batch(fq=fq, fk=fk, fT=fT)
        if pos is not None:
            ps = pos.to(self.device)
            b.pos_q, b.pos_k = ps[:, :Q], ps[:, Q:].reshape(I, m, Q).transpose(1, 2)
        return b

    @torch.no_grad()
    def draw(self, steps: int) -> list[Batch]:
        """Draw ``steps`` batches; each instance from its own generator at its own shape."""
        if self.rope is None:
            return [self._batch(None, None) for _ in range(steps)]
        raw, pos = self._draw_raw(steps)
        return [self._batch(raw[:, s], None if pos is None else pos[:, s]) for s in range(steps)]

    @torch.no_grad()
    def next_batch(self, chunk: int, reuse: bool = False) -> Batch:
        """The next step's batch. Without RoPE each step's strengths are drawn when it is needed,
        straight into the batch (:meth:`_draw_strengths`; ``chunk`` is then irrelevant: each
        instance's stream is sequential, so drawing several steps at once would give the same
        data). With RoPE raw draws are taken ``chunk`` steps at a time (capped so that a large
        batch holds at most ``_RAW_BUDGET`` numbers), positions after each chunk's strengths.

        ``reuse=True`` (the trainer's choice, which drops each batch after its step) draws into
        one buffer owned by the model, overwritten by the next ``reuse=True`` call: a fresh
        (I, N, T) array per step is 2.5 MB at 25 default instances, which the allocator maps
        anew each time (≈640 page faults per step; see :meth:`losses_and_grads`). Same numbers
        either way (tested)."""
        if self.rope is None:
            return self._batch(None, None, reuse=reuse)
        if not self._buf:
            per_step = self.I * self.N * self.Q * (1 + self.m)
            steps = max(1, min(int(chunk), self._RAW_BUDGET // per_step))
            raw, pos = self._draw_raw(steps)
            self._buf = [(raw[:, s], None if pos is None else pos[:, s]) for s in range(steps)][::-1]
        return self._batch(*self._buf.pop())

    # ---- forward ------------------------------------------------------------------------
    def _rotate(self, h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        ang = pos.to(h.dtype)[..., None] * self.theta  # (..., H/2)
        c, s = torch.cos(ang), torch.sin(ang)
        h2 = h.unflatten(-1, (-1, 2))
        x0, x1 = h2[..., 0], h2[..., 1]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)

    def logits(self, fq: torch.Tensor, fk: torch.Tensor, pos_q=None, pos_k=None, W=None) -> torch.Tensor:
        """Head logits (I, Q, m) for strengths fq (I,Q,N), fk (I,Q,m,N)."""
        W = self.W if W is None else W
        I, Q, m = fk.shape[0], fk.shape[1], fk.shape[2]
        xq = torch.bmm(fq, W.transpose(1, 2))
        xk = torch.bmm(fk.reshape(I, Q * m, -1), W.transpose(1, 2))
        return self.head_logits(xq, xk.reshape(I, Q, m, -1), pos_q, pos_k)

    def head_logits(self, xq, xk, pos_q=None, pos_k=None) -> torch.Tensor:
        """Logits (I,Q,m) from tokens xq (I,Q,d), xk (I,Q,m,d)."""
        I, Q, m, d = xk.shape
        WQ = self.WQ * self.head_mask[:, None, :]
        WK = self.WK * self.head_mask[:, None, :]
        qh = torch.bmm(xq, WQ)
        kh = torch.bmm(xk.reshape(I, Q * m, d), WK).reshape(I, Q, m, -1)
        if self.rope is not None:
            qh = self._rotate(qh, pos_q)
            kh = self._rotate(kh, pos_k)
        return (qh[:, :, None, :] * kh).sum(-1)

    def target_logits(self, fq, fk, pos_q=None, pos_k=None) -> torch.Tensor:
        tq = torch.bmm(fq, self.Lam)  # (I,Q,N)
        tgt = (tq[:, :, None, :] * fk).sum(-1)
        if self.rope is not None:
            delta = (pos_k - pos_q[..., None]).to(fq.dtype)  # (I,Q,m)
            for j in range(self.positional.shape[1]):
                a, b_, v, band = self.positional[0, j].tolist()
                a, b_, band = int(a), int(b_), int(band)
                tgt = tgt + v * fq[:, :, a, None] * fk[:, :, :, b_] * torch.cos(self.theta[band] * delta)
        return tgt

    def losses(self, batch: Batch, reconstruction: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-instance (L_rec, L_attn), each of shape (I,)."""
        fq, fk = batch.fq, batch.fk
        I, Q, m, N = fk.shape
        f = batch.f if batch.f is not None else torch.cat((fq, fk.reshape(I, Q * m, N)), dim=1)  # (I,T,N)
        x = torch.bmm(f, self.W.transpose(1, 2))  # (I,T,d)
        if reconstruction:
            rec = torch.relu(torch.bmm(x, self.W) + self.b[:, None, :])
            L_rec = (((f - rec) ** 2) * self.feat_mask[:, None, :]).sum(-1).mean(-1)
        else:
            L_rec = torch.zeros(I, device=x.device)
        xq, xk = x[:, :Q], x[:, Q:].reshape(I, Q, m, -1)
        logits = self.head_logits(xq, xk, batch.pos_q, batch.pos_k)
        with torch.no_grad():
            if self.teacher is not None:  # student-teacher setting of docs/math.md §2.1: ℓ* = x_rᵀ M_T x_s
                tgt = (torch.bmm(xq, self.teacher)[:, :, None, :] * xk).sum(-1)
            else:
                tgt = self.target_logits(fq, fk, batch.pos_q, batch.pos_k)
            pi_star = torch.softmax(tgt, dim=-1)
        L_attn = -(pi_star * torch.log_softmax(logits, dim=-1)).sum(-1).mean(-1)
        return L_rec, L_attn

    @torch.no_grad()
    def losses_and_grads(self, batch: Batch, reconstruction: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-instance (L_rec, L_attn) as :meth:`losses`, and the gradient of
        ``Σ_i L_rec,i + λ_i L_attn,i`` written into ``.grad`` of the parameters that require one.

        A hand-derived backward pass in the feature-major layout of ``batch.fT``, used by the
        trainer instead of autograd (equality with autograd is tested in tests/toy). Why: a step
        of a 25-instance batch is bound by memory traffic over the (I, N, T) arrays; autograd's
        graph walks them ~20 times (masks, pow, broadcast products, token-major matmuls with a
        transposed operand), this ~8 times with contiguous matmuls, and a 1-instance step skips
        the graph's Python overhead. Padded features and head columns need no masks: their
        weights, data and hence gradients are exactly zero. RoPE models use :meth:`losses`.

        Per instance (columns = tokens): ``X = W F``, ``Z = Wᵀ X + b``, ``E = ReLU(Z) − F``,
        ``L_rec = ‖E‖²/T``, ``∂L_rec/∂Z = (2/T) E ⊙ 1[Z>0]``. Head through the bilinear form
        ``Ω = W_Q W_Kᵀ`` (d×d): ``y = Ωᵀ x_r`` once per query, ``ℓ_j = y·x_j``,
        ``∂ℓ := ∂(λ L_attn)/∂ℓ = (λ/Q)(softmax ℓ − π*)``, ``g = Σ_j ∂ℓ_j x_j``,
        ``∂Ω = Σ_r x_r gᵀ``, ``∂W_Q = ∂Ω W_K``, ``∂W_K = ∂Ωᵀ W_Q``, ``∂x_r = Ω g``,
        ``∂x_j = ∂ℓ_j y`` — the same gradient as through ``q = W_Qᵀ x_r``, ``k_j = W_Kᵀ x_j`` up to
        float re-association, without a head projection per key (≈4× fewer head FLOPs at
        d_h = d). ``∂/∂W`` collects W's two roles: decoder ``X (∂Z)ᵀ`` and encoder ``(∂X) Fᵀ``.
        The target uses only the ranges of Λ's non-zero rows/columns (:meth:`_target_fT`).

        The per-token arrays (X, the products before the logit sums, ReLU(Z), E, ∂X: ≈7 MB at 25
        default instances) are work arrays of the model (:meth:`_work`), allocated once and
        reused by every step. Why: glibc serves arrays of this size (≥ ~128 KB) by mapping fresh
        pages, so each step paid a page fault per 4 KB touched; with the per-step batch array
        (see :meth:`next_batch`) that was a large share of a 25-instance step. The returned
        losses and the ``.grad`` tensors are fresh (small). The operations and operands are
        those of fresh arrays (both 64-byte aligned), so the results are bit for bit unchanged
        (tested against fresh arrays in tests/toy/test_fast_paths.py).
        """
        if self.rope is not None:
            raise ValueError("losses_and_grads does not support RoPE; use losses() with autograd")
        if batch.fT is None:
            raise ValueError("losses_and_grads needs the feature-major batch.fT (from ToyModel.draw/next_batch)")
        F = batch.fT
        I, N, T = F.shape
        Q, m = self.Q, self.m
        W, WQ, WK = self.W, self.WQ, self.WK
        d = W.shape[1]
        work = self._work if F.numel() >= self._WORK_MIN else self._fresh  # small batch: fresh arrays
        X = torch.bmm(W, F, out=work("X", (I, d, T)))  # (I,d,T)
        Xq, Xk = X[:, :, :Q], X[:, :, Q:]
        Xk4 = Xk.view(I, d, m, Q)  # key j of query q at [:, :, j, q]
        P = work("B", (I, d, m, Q))  # products before a sum over d or over the keys
        Om = torch.bmm(WQ, WK.transpose(1, 2))  # (I,d,d) Ω = W_Q W_Kᵀ
        Y = torch.bmm(Om.transpose(1, 2), Xq, out=work("Y", (I, d, Q)))  # (I,d,Q): Ωᵀ x_r
        logits = torch.mul(Xk4, Y[:, :, None, :], out=P).sum(1)  # (I,m,Q) = x_rᵀ Ω x_j
        if self.teacher is not None:  # ℓ* = x_rᵀ M_T x_s (no gradient through the target)
            tq = torch.bmm(self.teacher.transpose(1, 2), Xq)  # (I,d,Q)
            tgt = torch.mul(Xk4, tq[:, :, None, :], out=P).sum(1)
        else:
            tgt = self._target_fT(F, work)
        pi_star = torch.softmax(tgt, dim=1)
        logp = torch.log_softmax(logits, dim=1)
        L_attn = -(pi_star * logp).sum(1).mean(-1)
        dl = (logp.exp_() - pi_star).mul_((self.lam / Q)[:, None, None])  # (I,m,Q) = ∂(λ L_attn)/∂ℓ
        G = torch.sum(torch.mul(Xk4, dl[:, None], out=P), 2, out=work("G", (I, d, Q)))  # Σ_j ∂ℓ_j x_j
        if WQ.requires_grad:
            dOm = torch.bmm(Xq, G.transpose(1, 2))  # (I,d,d) = ∂/∂Ω
            WQ.grad = torch.bmm(dOm, WK)
            WK.grad = torch.bmm(dOm.transpose(1, 2), WQ)
        train_W = W.requires_grad
        dX = None
        if reconstruction:
            R = torch.baddbmm(self.b[:, :, None], W.transpose(1, 2), X, out=work("A", (I, N, T))).relu_()
            E = torch.sub(R, F, out=work("B", (I, N, T)))  # R = ReLU(Z) (I,N,T); P is dead
            L_rec = torch.linalg.vector_norm(E.view(I, -1), dim=1).square_().div_(T)
            if self.b.requires_grad or train_W:
                # E ⊙ 1[Z>0], in place (R > 0 ⇔ Z > 0, NaN included); the factor 2/T comes below
                dZ = torch.ops.aten.threshold_backward.grad_input(E, R, 0.0, grad_input=E)
                if self.b.requires_grad:
                    self.b.grad = dZ.sum(2).mul_(2.0 / T)
                if train_W:
                    gW = torch.bmm(X, dZ.transpose(1, 2)).mul_(2.0 / T)  # decoder role
                    dX = torch.bmm(W * (2.0 / T), dZ, out=work("A", (I, d, T)))  # R is dead
        else:
            L_rec = torch.zeros(I, device=X.device)
        if train_W:
            if dX is None:
                gW = torch.zeros_like(W)
                dX = work("A", (I, d, T))
                dX = torch.zeros_like(X) if dX is None else dX.zero_()
            dX[:, :, :Q].baddbmm_(Om, G)  # ∂/∂x_r = Ω Σ_j ∂ℓ_j x_j
            dX[:, :, Q:].view(I, d, m, Q).addcmul_(Y[:, :, None, :], dl[:, None])  # ∂/∂x_j = Ωᵀ x_r ∂ℓ_j
            W.grad = gW.baddbmm_(dX, F.transpose(1, 2))  # encoder role
        return L_rec, L_attn

    #: Batches whose (I, N, T) array has fewer float32 elements (128 KB: glibc's default threshold
    #: for serving an allocation by mapping fresh pages) use fresh arrays in
    #: :meth:`losses_and_grads` (:meth:`_fresh`): there a 1-instance step (~0.5 ms) is per-call
    #: overhead, which the work-array bookkeeping would only add to.
    _WORK_MIN = 1 << 15

    @staticmethod
    def _fresh(name: str, shape: tuple[int, ...]) -> None:
        """:meth:`_work` for small batches: None, i.e. ``out=None``, a fresh array."""
        return None

    def _work(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A work array of :meth:`losses_and_grads` of the given shape: the leading elements of
        one flat buffer per name (on the model's device, grown as needed, reused by every step;
        its content is garbage until written). Arrays whose uses do not overlap share a name
        ("A": ReLU(Z), then ∂X; "B": the products before the logit sums, then E), which keeps the
        step's working set smaller in the (shared) L3 cache."""
        v = self._ws_views.get((name, shape))
        if v is not None and v.device == self.W.device:
            return v  # cached view: no slicing per call
        n = math.prod(shape)
        t = self._ws.get(name)
        if t is None or t.numel() < n or t.device != self.W.device:
            t = self._ws[name] = torch.empty(n, dtype=torch.float32, device=self.W.device)
            self._ws_views = {k: u for k, u in self._ws_views.items() if k[0] != name}  # old buffer's
        v = self._ws_views[(name, shape)] = t[:n].view(shape)
        return v

    def _target_fT(self, F: torch.Tensor, work=None) -> torch.Tensor:
        """Target logits (I, m, Q) ``ℓ*_j = f_rᵀ Λ f_j`` from the feature-major strengths, using
        only the range of rows (query features) and of columns (key features) of Λ that holds its
        non-zeros in the batch: the terms left out are exact zeros, so these are the same sums
        with fewer zero terms (slices of F, no copies). The ranges are cached and recomputed
        whenever the ``Lam`` buffer is modified. ``work``: :meth:`_work` (or :meth:`_fresh`), for
        the array of products."""
        I, N, T = F.shape
        Q, m = self.Q, self.m
        key = (self.Lam._version, self.Lam.data_ptr())
        if getattr(self, "_lam_support", (None,))[0] != key:
            nz = self.Lam != 0
            rows = torch.nonzero(nz.any(2).any(0)).flatten().tolist()
            cols = torch.nonzero(nz.any(1).any(0)).flatten().tolist()
            if not rows:  # Λ = 0: a single zero row and column give the zero target
                rows = cols = [0]
            a0, a1, b0, b1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            LamT = self.Lam[:, a0:a1, b0:b1].transpose(1, 2).contiguous()  # (I, |B|, |A|)
            self._lam_support = (key, a0, a1, b0, b1, LamT)
        _, a0, a1, b0, b1, LamT = self._lam_support
        tq = torch.bmm(LamT, F[:, a0:a1, :Q])  # (I,|B|,Q): (Λᵀ f_r) on the key range
        Fk = F[:, b0:b1, Q:].view(I, b1 - b0, m, Q)
        out = None if work is None else work("B", (I, b1 - b0, m, Q))
        return torch.mul(Fk, tq[:, :, None, :], out=out).sum(1)

    # ---- state --------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Per-instance numpy copies (padded): W, b, WQ, WK."""
        return {k: getattr(self, k).detach().cpu().numpy().copy() for k in ("W", "b", "WQ", "WK")}

    def instance_weights(self, i: int) -> dict[str, np.ndarray]:
        """Unpadded weights of instance i (float64)."""
        c = self.configs[i]
        st = {k: getattr(self, k)[i].detach().cpu().double().numpy() for k in ("W", "b", "WQ", "WK")}
        return {
            "W": st["W"][:, : c.n].copy(),
            "b": st["b"][: c.n].copy(),
            "WQ": st["WQ"][:, : c.d_h].copy(),
            "WK": st["WK"][:, : c.d_h].copy(),
        }

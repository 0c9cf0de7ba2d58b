"""The per-(layer, head, Δ) core SVD cache of a model (docs/math.md §4.3).

In the spirit of TransformerLens' ``FactoredMatrix``: factors in, cached U/S/V out. One class,
:class:`SVDCache`, built from a model's heads (:class:`~svfcheck.real.heads.ModelHeads`),
factorises each layer once (:class:`LayerFactors`: ``W̃ = Q R``, docs/math.md §4.1) and hands
out, lazily and cached,

- :meth:`SVDCache.basis`: a layer's full ``(U, S, V)`` at Δ = 0 (the fast route's basis);
- :meth:`SVDCache.core`: the core SVDs ``(Ũ, S, Ṽ)`` of ``C(Δ) = R_q M(Δ) R_kᵀ`` (§4.2);
- :meth:`SVDCache.core_lookup` / :meth:`SVDCache.prepare`: the same for the decomposition,
  only the (head, Δ) entries it asks for (:class:`CoreRequest`), in its dtype, with the
  key-side factor ``F`` and the basis control's table (:meth:`SVDCache.control_table`).

:meth:`SVDCache.prepare` with ``room`` keeps the tables' bytes within it, evicting whole tables
(docs/math.md §4.5); a ``lean`` cache keeps each entry only in the dtype asked for; with a
``disk`` store (:class:`~svfcheck.real.core_disk.CoreDisk`, docs/math.md §4.6) entries are read
from disk before they are computed, and written there once computed.

:func:`svd_cache` is the shared cache of a ``ModelHeads``, :func:`pipeline_cache` the lean
one of the SAD pipeline. The all-heads SVD routes and the
core SVD itself (:func:`~svfcheck.real.svd.core_svd`) live in :mod:`svfcheck.real.svd`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .core_tables import CoreRequest, CoreStats, _CoreTable, _copy_rows, _merge, _Req
from .heads import ModelHeads, norm_maps, rope_matrix
from .svd import core_svd, factor, middle_matrix, safe_singular_values, sign_fix
from .threads import batched_jobs, batched_map

__all__ = ["CoreRequest", "CoreStats", "LayerFactors", "SVDCache", "svd_cache", "pipeline_cache"]

#: Cores per block in :meth:`SVDCache._cores` (32 of 64×64 float64: 1 MB per intermediate).
_CORE_BLOCK = 32


def _r_factor(W: torch.Tensor, route: str) -> torch.Tensor:
    """The ``R`` of :func:`~svfcheck.real.svd.factor` alone (QR in ``mode="r"``: the same R, without forming Q)."""
    if route == "qr":
        return torch.linalg.qr(W, mode="r")[1]
    return factor(W, route)[1]

def _control_rows(F: torch.Tensor, S: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """The basis control's table rows ``F̂ = F diag(1/s) Q`` (n, d_h, R) of entries ``F`` (n, d_h, R),
    ``S`` (n, R) with their heads' Haar matrices ``Q`` (n, R, R); zero singular values taken as 1.
    The one formula of :meth:`SVDCache.control_table` and of the workers' writes, so that rows
    computed in either place are the same."""
    return (F / safe_singular_values(S)[:, None, :]) @ Q


@dataclass(frozen=True, eq=False)
class LayerFactors:
    """Factorisation of one layer (float64): ``W̃_Q[h] = Q R_q[h]``, ``W̃_K[g] = Q R_k[g]``;
    ``GRkT[h] = G_k R_k[kv(h)]ᵀ`` (with the QK-norm key gain ``G_k``, else ``R_kᵀ``), the
    key-side factor of ``F = G_k R_kᵀ Ṽ`` shared by the core tables and the summed route.
    With a QK-norm that is not one diagonal for every head (docs/math.md §3.19) ``G_k`` is the
    key head's ``L_k`` (:func:`~svfcheck.real.heads.norm_maps`) and ``RqL[h] = R_q[h] L_q[h]ᵀ``
    is the query side of the core ``C(Δ) = RqL R_Δ GRkT`` (else ``None``)."""

    R_q: torch.Tensor  # (H, d_h, d_h)
    R_k: torch.Tensor  # (Hkv, d_h, d_h)
    R_q_inv: torch.Tensor  # (H, d_h, d_h)
    R_k_inv: torch.Tensor  # (Hkv, d_h, d_h)
    W_Q: torch.Tensor  # (H, D, d_h) augmented, float64
    W_K: torch.Tensor  # (Hkv, D, d_h)
    kv_index: torch.Tensor  # (H,)
    GRkT: torch.Tensor  # (H, d_h, d_h)
    RqL: torch.Tensor | None = None  # (H, d_h, d_h): per-head QK-norm maps only


class SVDCache:
    """Per-model cache of layer factorisations and of core SVDs per (layer, head, Δ) (docs/math.md §4.3).

    ``core(layer, deltas)`` returns ``(Ũ, S, Ṽ)`` of ``C(Δ) = R_q M(Δ) R_kᵀ`` for every head,
    shapes (n_Δ, H, d_h, d_h) / (n_Δ, H, d_h); :meth:`core_lookup` serves the decomposition,
    which asks only for the (head, Δ) entries its pairs use. Either computes only the entries
    not yet cached (lazily: the first 128-token prompt of SmolLM2-135M needs about a quarter of
    the 30 × 9 × 128 entries its offsets span, 32 prompts about 88%; measured).
    ``basis(layer)`` returns full ``(U, S, V)`` (H, D, d_h) at Δ = 0.
    Stored per layer over a contiguous offset range (:class:`_CoreTable`), head-major with the
    key-side factor ``F`` (see :meth:`core_lookup`), built on all cores (:meth:`_core_rows`;
    :meth:`prepare` takes several layers' requests in one pooled run); in float64, with
    per-dtype copies for the decomposition and the basis control's table
    (:meth:`control_table`) written by the workers as new entries are computed, and converted
    entry by entry on demand for entries computed earlier. ``lean=True`` keeps each table in the
    dtype it is asked for instead (one table per (layer, dtype), no float64 copy: 2.5× less
    memory for a float32 decomposition, the same values, since a copy is the float64 entry
    converted). Memory grows with the entries held, up to layers × heads × offsets × d_h²:
    SmolLM2-135M at 128 tokens (30 layers × 9 heads × 128 offsets × 64²) holds ≈ 3.4 GB in
    float64 (Ũ, Ṽ, F) plus ≈ 2.3 GB for a float32 decomposition with controls (its copies and
    the control table), ≈ 2.2 GB lean; :meth:`prepare` with ``room`` bounds it (docs/math.md
    §4.5). With ``disk`` (a :class:`~svfcheck.real.core_disk.CoreDisk`), missing entries are
    read from disk when there, and written there once computed (docs/math.md §4.6). Sign
    convention here is on the core (largest-|.| entry of each ``ũ_r = Q_qᵀ u_r`` positive), so
    it needs no D-sized vector per offset; terms and relative contributions do not depend on
    signs, the paper control does (via its Q's). For layers without RoPE every Δ maps to the
    Δ = 0 entry. Every entry is computed on its own (:func:`~svfcheck.real.svd.core_svd`
    decides per core), so the cache's contents do not depend on the order or grouping of the
    requests, nor on what was evicted or read from disk (tested).
    """

    def __init__(self, heads: ModelHeads, route: str = "qr", *, lean: bool = False, disk=None):
        self.heads = heads
        self.route = route
        self.lean = lean
        self.disk = disk
        self.stats = CoreStats()
        self._factors: dict[int, LayerFactors] = {}
        self._core: dict[tuple[int, torch.dtype], _CoreTable] = {}
        self._basis: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._disk_keys: dict[tuple[int, torch.dtype], str] = {}

    def factors(self, layer: int) -> LayerFactors:
        if layer not in self._factors:
            lh = self.heads.layer(layer)
            wq, wk = lh.augmented(torch.float64)
            Rq, Rk = _r_factor(wq, self.route), _r_factor(wk, self.route)
            kv = torch.as_tensor(lh.kv_head(np.arange(lh.n_heads)))
            eye = torch.eye(lh.head_dim, dtype=torch.float64)
            Rqi = torch.linalg.solve_triangular(Rq, eye.expand_as(Rq), upper=True)
            Rki = torch.linalg.solve_triangular(Rk, eye.expand_as(Rk), upper=True)
            RkT = Rk[kv].transpose(-1, -2)
            RqL = None
            if lh.norm_shared:
                GRkT = lh.k_gain.double()[None, :, None] * RkT
            elif lh.qk_norm:
                Lq, Lk = norm_maps(lh)
                GRkT, RqL = Lk @ RkT, Rq @ Lq.transpose(-1, -2)
            else:
                GRkT = RkT.contiguous()
            self._factors[layer] = LayerFactors(Rq, Rk, Rqi, Rki, wq, wk, kv, GRkT, RqL)
        return self._factors[layer]

    def basis(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if layer not in self._basis:
            f = self.factors(layer)
            Ut, S, Vt = (t[0] for t in self.core(layer, 0))
            U = f.W_Q @ (f.R_q_inv @ Ut)
            V = f.W_K[f.kv_index] @ (f.R_k_inv[f.kv_index] @ Vt)
            self._basis[layer] = (U, S, V)
        return self._basis[layer]

    def _key(self, layer: int, dtype: torch.dtype | None = None) -> tuple[int, torch.dtype]:
        """The table that holds ``layer``'s entries for a ``dtype`` request."""
        dtype = torch.float64 if dtype is None else dtype
        return int(layer), (dtype if self.lean else torch.float64)

    def entry_bytes(self, layer: int, dtype: torch.dtype, control: bool) -> int:
        """Bytes one new (head, Δ) entry of ``layer`` adds when asked for in ``dtype`` (its row
        in the store, its converted copy, its basis-control row with ``control``)."""
        dh = self.heads.layer(layer).head_dim
        per = lambda t: (3 * dh * dh + dh) * torch.empty(0, dtype=t).element_size()  # noqa: E731
        store = self._key(layer, dtype)[1]
        b = per(store) + (per(dtype) if dtype != store else 0)
        return b + (dh * dh * torch.empty(0, dtype=dtype).element_size() if control else 0)

    def held_bytes(self) -> int:
        """Bytes of every entry held, over all tables (:meth:`_CoreTable.held_bytes`)."""
        return sum(t.held_bytes() for t in self._core.values())

    def _table(self, r: _Req, room: int | None) -> _CoreTable:
        """The table of request ``r``, grown to cover its offsets and ``span`` (lo, hi) — ``span``
        only allocates: a prompt's whole visible-offset range at once, so later prompts of that
        length never grow (and copy) the table again — with a converted copy for ``r.dtype``.
        Growing copies the computed entries over; within a ``room`` that has no space for the
        copy, the old table is dropped instead (its entries are computed or read again)."""
        key = self._key(r.layer, r.dtype)
        lh = self.heads.layer(r.layer)
        H, dh = lh.n_heads, lh.head_dim
        tab = self._core.get(key)
        lo, hi = int(r.ds.min()), int(r.ds.max())
        if r.span is not None:
            lo, hi = min(lo, int(r.span[0])), max(hi, int(r.span[1]))
        if tab is not None:
            lo, hi = min(lo, tab.lo), max(hi, tab.lo + tab.T - 1)
        if tab is None or lo != tab.lo or hi != tab.lo + tab.T - 1:
            T, e, st = hi - lo + 1, torch.empty, key[1]
            grown = _CoreTable(lo, e(H, T, dh, dh, dtype=st), e(H, T, dh, dtype=st), e(H, T, dh, dh, dtype=st),
                               e(H, T, dh, dh, dtype=st), torch.zeros(H, T, dtype=torch.bool), {}, {})
            if tab is not None and room is not None and self.held_bytes() + tab.held_bytes() > room:
                self._evict(key)
            elif tab is not None:  # move the computed entries (converted copies are redone on demand)
                s = tab.lo - lo
                grown.filled[:, s : s + tab.T] = tab.filled
                h, t = torch.nonzero(tab.filled, as_tuple=True)
                for a, b in zip(grown.arrays(), tab.arrays()):
                    a[h, t + s] = b[h, t]
            tab = self._core[key] = grown
        if r.dtype != tab.dtype and r.dtype not in tab.conv:
            tab.conv[r.dtype] = (tuple(torch.empty(a.shape, dtype=r.dtype) for a in tab.arrays()),
                                 torch.zeros_like(tab.filled))
        return tab

    @staticmethod
    def _mask(tab: _CoreTable, hs: np.ndarray, ds: np.ndarray) -> torch.Tensor:
        m = torch.zeros(tab.filled.shape, dtype=torch.bool)
        m[torch.as_tensor(hs, dtype=torch.int64), torch.as_tensor(ds - tab.lo)] = True
        return m

    @staticmethod
    def _control(tab: _CoreTable, dtype: torch.dtype, control) -> tuple | None:
        """``(ctl, Q)``: ``dtype``'s basis-control table for ``control = (key, Q)`` (replaced when the
        key changed), or None without a control."""
        if control is None:
            return None
        key, Q = control
        ctl = tab.ctl.get(dtype)
        if ctl is None or ctl[0] != key:
            ctl = tab.ctl[dtype] = [key, torch.empty(tab.F.shape, dtype=dtype), torch.zeros_like(tab.filled)]
        return ctl, Q

    def _job(self, layer: int, tab: _CoreTable, need: torch.Tensor, ctl: tuple | None, dtype: torch.dtype):
        """``(job, commit)``: the job that computes the entries ``need`` (H, T) of ``tab``
        (:func:`~svfcheck.real.threads.batched_jobs`) — written, by the workers that compute them,
        into the table, into every converted copy it has and, with ``ctl = (ctl, Q)``, into
        ``dtype``'s basis-control table (each entry goes through memory once, while in cache, on
        all cores) — and the call that marks them held once it has run."""
        h, t = torch.nonzero(need, as_tuple=True)  # head-major order
        sinks = [tab.arrays()] + [arrays for arrays, _ in tab.conv.values()]
        fh = None if ctl is None else (ctl[0][1], ctl[1].to(dtype))
        job = self._core_rows(layer, h, t.numpy() + tab.lo, into=(h * tab.T + t, sinks, fh))

        def commit():
            tab.filled |= need
            for _, have in tab.conv.values():
                have |= need
            if ctl is not None:
                ctl[0][2] |= need

        return job, commit

    @staticmethod
    def _control_job(tab: _CoreTable, rows: torch.Tensor, ctl: tuple):
        """``(job, commit)`` writing the basis-control rows ``F̂ = F diag(1/s) Q`` of the held
        entries ``rows`` (H, T) (read from disk) on the workers: the operations of
        :meth:`_core_rows`' writes, so the same values."""
        (c, Q), dh = ctl, tab.S.shape[-1]
        h, t = torch.nonzero(rows, as_tuple=True)
        Q = Q.to(tab.dtype)
        F, S, Fh = tab.F.view(-1, dh, dh), tab.S.view(-1, dh), c[1].view(-1, dh * dh)

        def write(hc, rc):
            Fh.index_copy_(0, rc, _control_rows(F[rc], S[rc], Q[hc]).reshape(len(rc), -1))

        def commit():
            c[2] |= rows

        return (write, (h, h * tab.T + t)), commit

    def _prepare(self, reqs: list[_Req], room: int | None = None, count: bool = False) -> None:
        """Hold every entry of ``reqs``: those missing are read from disk when there, the rest
        computed, all layers' in one pooled run; within ``room`` bytes when given
        (:meth:`_make_room`). ``count``: add to :attr:`stats`."""
        reqs = _merge(reqs, self._key)
        if room is not None:
            self._make_room(reqs, room)
        planned = []
        for r in reqs:
            tab = self._table(r, room)
            req = self._mask(tab, r.hs, r.ds)
            if count:
                self.stats.memory += int((req & tab.filled).sum())
            planned.append((r, tab, req & ~tab.filled, self._control(tab, r.dtype, r.control)))
        if self.disk is not None:  # every layer's files read in one pooled run
            gots = self.disk.load_many([(self._disk_key(r.layer, tab.dtype), tab, need) for r, tab, need, _ in planned])
        todos = []
        for k, (r, tab, need, ctl) in enumerate(planned):
            if self.disk is not None:
                got = gots[k]
                tab.filled |= got
                need &= ~got
                if count:
                    self.stats.disk += int(got.sum())
                if ctl is not None and r.dtype == tab.dtype and bool(got.any()):
                    todos.append((r.layer, tab, None, self._control_job(tab, got, ctl)))
            if bool(need.any()):
                todos.append((r.layer, tab, need, self._job(r.layer, tab, need, ctl, r.dtype)))
        batched_jobs([job for *_, (job, _) in todos], block=_CORE_BLOCK)
        for _, _, need, (_, commit) in todos:
            commit()
            if need is not None and count:  # None: control rows of entries read from disk
                self.stats.computed += int(need.sum())
        if self.disk is not None:
            self.disk.store_many([(self._disk_key(layer, tab.dtype), tab, need) for layer, tab, need, _ in todos
                                  if need is not None])
        if count or room is not None:
            self.stats.peak_bytes = max(self.stats.peak_bytes, self.held_bytes())

    def _make_room(self, reqs: list[_Req], room: int) -> None:
        """Evict whole tables until the entries held plus the new ones of ``reqs`` fit in ``room``
        bytes (docs/math.md §4.5). Tables the requests read are kept while others can go; the
        others go in the order of their next use when layers are decomposed in ascending order,
        round after round (prompt after prompt): the layer just behind the requests' first
        layer is needed last, so it goes first. Plain least-recently-used would evict exactly
        the layer needed next, every round, once the layers do not all fit."""
        pinned, new = set(), 0
        for r in reqs:
            key = self._key(r.layer, r.dtype)
            pinned.add(key)
            tab = self._core.get(key)
            u = np.unique(np.stack([r.hs, r.ds], 1), axis=0)
            held = 0
            if tab is not None:
                hs, ds = u[:, 0], u[:, 1]
                inside = (ds >= tab.lo) & (ds < tab.lo + tab.T)
                held = int(tab.filled[torch.as_tensor(hs[inside]), torch.as_tensor(ds[inside] - tab.lo)].sum())
            new += (len(u) - held) * self.entry_bytes(r.layer, r.dtype, r.control is not None)
        over = self.held_bytes() + new - room
        if over <= 0:
            return
        first, L = min(r.layer for r in reqs), self.heads.n_layers
        others = sorted((k for k in self._core if k not in pinned), key=lambda k: ((k[0] - first) % L, str(k[1])), reverse=True)
        for key in others + sorted(pinned & set(self._core), key=lambda k: (k[0], str(k[1]))):
            if over <= 0:
                return
            over -= self._evict(key)

    def _evict(self, key) -> int:
        """Drop one table; returns the bytes it held."""
        tab = self._core.pop(key)
        self.stats.evicted += int(tab.filled.sum())
        return tab.held_bytes()

    def _disk_key(self, layer: int, dtype: torch.dtype) -> str:
        if (layer, dtype) not in self._disk_keys:
            from .core_disk import layer_key

            self._disk_keys[(layer, dtype)] = layer_key(self.heads.layer(layer), self.factors(layer), dtype, self.route)
        return self._disk_keys[(layer, dtype)]

    def _ensure(self, layer: int, hs: np.ndarray, ds: np.ndarray, span=None, dtype=None, control=None) -> _CoreTable:
        """Hold one layer's entries ``(hs, ds)``; its table."""
        dtype = torch.float64 if dtype is None else dtype
        self._prepare([_Req(int(layer), np.asarray(hs, dtype=np.int64), np.asarray(ds, dtype=np.int64), span, dtype, control)])
        return self._core[self._key(layer, dtype)]

    def prepare(self, requests, room: int | None = None) -> None:
        """Make sure the entries of several layers are held, all in one pooled run: each
        request is a :class:`CoreRequest` ``(layer, deltas, dtype, heads, span, control)`` (or a
        plain tuple in that order), as for :meth:`core_lookup`.
        Spread over the workers across layers (:func:`~svfcheck.real.threads.batched_jobs`), so
        a prompt that needs only a few new cores per layer still keeps every core busy; the
        entries are the same as one :meth:`core_lookup` per layer (each is computed on its own).
        ``room``: the bytes all tables may hold once these entries are in (docs/math.md §4.5):
        tables are evicted first as needed (:meth:`_make_room`); the requested entries alone must
        fit. Counts where the entries came from in :attr:`stats`."""
        reqs = []
        for layer, deltas, dtype, heads, span, control in requests:
            hs, ds, span = self._request(layer, deltas, heads, span)
            reqs.append(_Req(int(layer), hs, ds, span, dtype, control))
        if reqs:
            self._prepare(reqs, room, count=True)

    def _core_rows(self, layer: int, hs: torch.Tensor, ds: np.ndarray, into=None) -> tuple:
        """``(Ũ, S, Ṽ, F)`` float64 of the cores of heads ``hs`` at offsets ``ds`` (one row each).

        Thousands of d_h×d_h SVDs (:func:`~svfcheck.real.svd.core_svd`): through
        :func:`~svfcheck.real.threads.batched_map` (one intra-op thread each, one contiguous
        chunk per core), each chunk in blocks of :data:`_CORE_BLOCK` cores that are formed,
        decomposed, sign-fixed and multiplied into ``F`` while in cache and written straight into
        the output — all per-matrix work, so the result does not depend on the chunking.

        ``into = (rows, sinks, control)``: return instead the job ``(fn, tensors)`` (for
        :func:`~svfcheck.real.threads.batched_jobs`) that writes the results at the
        flat rows ``rows`` (head·T + t) of each table in ``sinks`` (tuples of (H, T, ...) tables
        ``(Ũ, S, Ṽ, F)``, each converted to its tables' dtype) and, with ``control = (F̂, Q)``,
        ``F̂ = F diag(1/s) Q[h]`` in ``F̂``'s dtype (the same operations as
        :meth:`control_table`, so the same values)."""
        lh = self.heads.layer(layer)
        f = self.factors(layer)
        dh = f.R_q.shape[-1]
        n = len(ds)
        ud, off = np.unique(np.asarray(ds, dtype=np.int64), return_inverse=True)
        if f.RqL is None:  # M(Δ) shared by the heads: (n_Δ, dh, dh) or None
            M, Rq, RkT = middle_matrix(lh, ud), f.R_q, f.R_k[f.kv_index].transpose(-1, -2)
        else:  # per-head QK-norm maps, folded into the factors: C = (R_q L_qᵀ) R_Δ (L_k R_kᵀ)
            M, Rq, RkT = (None if lh.rotary is None else rope_matrix(lh.rotary, dh, ud)), f.RqL, f.GRkT

        def one(hc, oc):
            # the cores C = R_q M(Δ) R_kᵀ of this block only (never the whole batch)
            Cc = Rq[hc] if M is None else Rq[hc] @ M[oc]
            Ut, S, Vt = core_svd(Cc @ RkT[hc])
            if lh.norm_center:  # LayerNorm's centring: one singular value is 0 exactly (docs/math.md §3.19)
                S[..., -1] = 0.0
            # core sign convention (cheap, no D-sized vector): largest-|.| entry of ũ_r positive
            Ut, Vt = sign_fix(Ut, Vt)
            return Ut, S, Vt, f.GRkT[hc] @ Vt

        hs = torch.as_tensor(hs, dtype=torch.int64)
        off = torch.as_tensor(off.reshape(-1))
        if into is None:
            e, dt = torch.empty, f.R_q.dtype
            out = (e(n, dh, dh, dtype=dt), e(n, dh, dtype=dt), e(n, dh, dh, dtype=dt), e(n, dh, dh, dtype=dt))
            return batched_map(one, hs, off, out=out, block=_CORE_BLOCK)
        rows, sinks, control = into

        def write(hc, oc, rc):  # disjoint rows per block: the workers never write the same entry
            res = one(hc, oc)
            for tables in sinks:
                vals = tuple(x.to(tables[0].dtype) for x in res)
                for a, v in zip(tables, vals):
                    a.view(-1, v[0].numel()).index_copy_(0, rc, v.reshape(len(rc), -1))
                if control is not None and control[0].dtype == tables[0].dtype:
                    Fh, Q = control
                    _, S, _, F = vals
                    Fh.view(-1, dh * dh).index_copy_(0, rc, _control_rows(F, S, Q[hc]).reshape(len(rc), -1))

        return write, (hs, off, torch.as_tensor(rows))

    def _cores(self, layer: int, deltas: np.ndarray) -> tuple:
        """``(Ũ, S, Ṽ, F)`` of every head at ``deltas``, head-major (H, n_Δ, ...), computed
        afresh (:meth:`_core_rows` over the full grid; not cached)."""
        H, n = self.heads.layer(layer).n_heads, len(deltas)
        hs = torch.arange(H).repeat_interleave(n)
        out = self._core_rows(layer, hs, np.tile(np.asarray(deltas, dtype=np.int64), H))
        return tuple(t.view(H, n, *t.shape[1:]) for t in out)

    def _offsets(self, layer: int, deltas) -> np.ndarray:
        deltas = np.atleast_1d(np.asarray(deltas, dtype=np.int64))
        return np.zeros_like(deltas) if self.heads.layer(layer).rotary is None else deltas

    def core(self, layer: int, deltas) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        deltas = self._offsets(layer, deltas)
        H = self.heads.layer(layer).n_heads
        tab = self._ensure(layer, np.repeat(np.arange(H), len(deltas)), np.tile(deltas, H))
        ix = torch.as_tensor(deltas - tab.lo)
        return tuple(t.index_select(1, ix).transpose(0, 1).contiguous() for t in (tab.Ut, tab.S, tab.Vt))

    def core_lookup(self, layer: int, deltas, dtype: torch.dtype, heads=None, span=None, control=None):
        """For the decomposition: ``(Ũ, S, Ṽ, F, index)`` in ``dtype`` where the first four are
        the layer's whole table, head-major (H, n_table, ...) so that one head's rows gather
        contiguously (``T[h].index_select(0, index)``), and ``index`` maps each of ``deltas`` to its
        row. ``heads``: per offset, the head whose core is needed (default: every head's);
        only those entries are guaranteed computed, so read only them. ``span``: (lo, hi), an
        offset range the table should cover (allocated, not computed; see :meth:`_table`).
        ``control = (key, Q)``: also fill the basis-control table of ``dtype`` for ``key``
        (:meth:`control_table`) as the new entries are computed.
        ``F[h, t] = G_k R_k[kv(h)]ᵀ Ṽ[h, t]`` (= ``W̃_Kᵀ v_r`` in head space, with the
        QK-norm key gain) is computed once per (layer, head, Δ), not once per pair."""
        hs, ds, span = self._request(layer, deltas, heads, span)
        tab = self._ensure(layer, hs, ds, span, dtype=dtype, control=control)
        return (*self._converted(tab, dtype), torch.as_tensor(self._offsets(layer, deltas) - tab.lo))

    def _request(self, layer: int, deltas, heads, span) -> tuple:
        """``(heads, offsets, span)`` of one entry each, for :meth:`core_lookup`'s arguments."""
        deltas = self._offsets(layer, deltas)
        lh = self.heads.layer(layer)
        if lh.rotary is None:
            span = None
        if heads is None:
            return np.repeat(np.arange(lh.n_heads), len(deltas)), np.tile(deltas, lh.n_heads), span
        return np.broadcast_to(np.asarray(heads, dtype=np.int64), deltas.shape).copy(), deltas, span

    @staticmethod
    def _converted(tab: _CoreTable, dtype: torch.dtype) -> tuple:
        """The table in ``dtype`` (its own dtype: itself), its held entries converted once."""
        if dtype == tab.dtype:
            return tab.arrays()
        if dtype not in tab.conv:
            tab.conv[dtype] = (tuple(torch.empty(a.shape, dtype=dtype) for a in tab.arrays()),
                               torch.zeros_like(tab.filled))
        arrays, have = tab.conv[dtype]
        new = tab.filled & ~have
        if bool(new.any()):
            rows = torch.nonzero(new.view(-1)).squeeze(1)
            for a, b in zip(arrays, tab.arrays()):
                _copy_rows(a, b, rows)
            have |= new
        return arrays

    def control_table(self, layer: int, dtype: torch.dtype, key, Q: torch.Tensor) -> torch.Tensor:
        """``F̂[h, t] = F[h, t] diag(1/s) Q[h]`` (H, n_table, d_h, R) in ``dtype`` for the basis
        control of the summed decomposition route (``Q``: (H, R, R), the heads' Haar matrices,
        identified by ``key``, e.g. the control seed; ``s`` the singular values, zeros taken as 1).
        Cached per (layer, dtype) for the latest ``key``, over the table's held entries
        (one product per entry here instead of one R×R product per pair there)."""
        tab = self._core[self._key(layer, dtype)]
        _, S, _, F = self._converted(tab, dtype)
        hit, _ = self._control(tab, dtype, (key, Q))
        new = tab.filled & ~hit[2]
        if bool(new.any()):
            h, t = torch.nonzero(new, as_tuple=True)
            hit[1][h, t] = _control_rows(F[h, t], S[h, t], Q.to(dtype)[h])
            hit[2] |= new
        return hit[1]

    def __len__(self) -> int:
        """Core SVDs held, over all tables, heads and offsets."""
        return sum(int(t.filled.sum()) for t in self._core.values())


def _attached(heads: ModelHeads, attr: str, make) -> SVDCache:
    """The cache kept on ``heads`` under ``attr`` (created by ``make`` on first use).

    It is kept on ``heads`` itself: the two refer to each other and the garbage collector frees
    both once neither is used. (A ``WeakKeyDictionary`` keyed by ``heads`` never freed either:
    its value, the cache, holds the key, so every analysed model's cores stayed for the life of
    the process — 2.2 GB per Gemma-3 model; tests/real/test_cache_lifetime.py.)"""
    cache = heads.__dict__.get(attr)
    if cache is None:
        cache = make()
        object.__setattr__(heads, attr, cache)
    return cache


def svd_cache(heads: ModelHeads) -> SVDCache:
    """The shared :class:`SVDCache` of ``heads`` (created on first use, freed with ``heads``)."""
    return _attached(heads, "_svd_cache", lambda: SVDCache(heads))


def pipeline_cache(heads: ModelHeads, disk=None) -> SVDCache:
    """The SAD pipeline's shared cache of ``heads`` (:func:`svfcheck.real.sad_step.decompose_batches`):
    lean (one table per dtype, docs/math.md §4.5), with ``disk`` as its disk store (None: none;
    set on every call, so it follows the caller's current choice); freed with ``heads``."""
    cache = _attached(heads, "_pipeline_cache", lambda: SVDCache(heads, lean=True))
    cache.disk = disk
    return cache

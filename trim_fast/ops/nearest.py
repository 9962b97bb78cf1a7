"""Top-1 inner-product search over unit rows: the nearest fingerprint for the fallback of unmatched
tokens (SPEC 3). Plain tensors in and out; nothing here knows what a bank is.

Inner product on unit rows is cosine. Backends:

- ``faiss-gpu``: ``GpuIndexFlatIP`` when faiss was built with GPU support and sees a GPU; torch
  tensors are searched in place (``faiss.contrib.torch_utils``), no host round trip.
- ``faiss-cpu``: ``IndexFlatIP`` (exact), or approximate ``ivf`` / ``hnsw`` for banks of 10^5+
  classes.
- ``torch``: exact blocked matmul + top-1 on the tensors' device; the fallback where faiss lacks
  GPU support on a CUDA device, and the naive twin every faiss result is tested against.

``auto`` picks faiss-gpu, then torch, on CUDA; faiss-cpu, then torch, on the CPU.
"""
from __future__ import annotations

import torch

BACKENDS = ("auto", "faiss-gpu", "faiss-cpu", "torch")
KINDS = ("exact", "ivf", "hnsw")
# Query rows per torch block: bounds the [block, C] score matrix.
_TORCH_BLOCK_BYTES = 64 << 20


def _faiss():
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        return None
    return faiss


def faiss_has_gpu() -> bool:
    faiss = _faiss()
    if faiss is None or not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001
        return False


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"index backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            return "faiss-gpu" if faiss_has_gpu() else "torch"
        return "faiss-cpu" if _faiss() is not None else "torch"
    if backend == "faiss-cpu" and _faiss() is None:
        raise RuntimeError("index backend 'faiss-cpu' needs the faiss package: "
                           "pip install 'trim-fast[faiss]'")
    if backend == "faiss-gpu" and not faiss_has_gpu():
        raise RuntimeError("index backend 'faiss-gpu' needs faiss with GPU support and a visible "
                           "GPU; use 'torch' for an exact search on the GPU")
    return backend


def torch_nearest(vectors: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-1 inner product, blocked so the ``[block, C]`` scores stay small."""
    m, c = queries.shape[0], vectors.shape[0]
    best = torch.empty(m, dtype=torch.float32, device=queries.device)
    rows = torch.empty(m, dtype=torch.long, device=queries.device)
    block = max(1, _TORCH_BLOCK_BYTES // (4 * max(c, 1)))
    vt = vectors.float().t()
    for start in range(0, m, block):
        s = queries[start:start + block].float() @ vt
        vals, idx = s.max(dim=1)
        best[start:start + block] = vals
        rows[start:start + block] = idx
    return best, rows


class NearestIndex:
    """Top-1 inner-product search over unit rows ``vectors [C, d]``.

    kind: ``exact`` (default), or ``ivf`` / ``hnsw`` (approximate; for banks of 10^5+ classes,
    faiss backends only). ``search(queries)`` takes unit rows ``[M, d]`` and returns
    ``(max_cos [M] fp32, row [M] long)`` on the queries' device.
    """

    def __init__(self, vectors: torch.Tensor, *, backend: str = "auto", kind: str = "exact",
                 nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32,
                 ef_search: int = 128, num_threads: int | None = None) -> None:
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise ValueError(f"NearestIndex: vectors must be a non-empty [C, d] "
                             f"matrix, got {tuple(vectors.shape)}")
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
        self.backend = resolve_backend(backend, vectors.device)
        if kind != "exact" and self.backend == "torch":
            raise ValueError(f"index kind {kind!r} needs a faiss backend; torch search is exact only")
        self.kind = kind
        self.dim = int(vectors.shape[1])
        self.num_classes = int(vectors.shape[0])
        self.vectors = vectors.float().contiguous()
        self._index = None
        self._gpu_resources = None
        if self.backend != "torch":
            self._index = self._build_faiss(nlist, nprobe, hnsw_m, ef_search, num_threads)

    def _build_faiss(self, nlist, nprobe, hnsw_m, ef_search, num_threads):
        faiss = _faiss()
        if num_threads is not None:
            faiss.omp_set_num_threads(int(num_threads))
        d = self.dim
        host = self.vectors.detach().cpu().numpy()
        if self.backend == "faiss-gpu":
            import faiss.contrib.torch_utils  # noqa: F401,PLC0415 - lets faiss take torch tensors

            self._gpu_resources = faiss.StandardGpuResources()
            cfg = faiss.GpuIndexFlatConfig()
            cfg.device = self.vectors.device.index or 0
            if self.kind == "exact":
                index = faiss.GpuIndexFlatIP(self._gpu_resources, d, cfg)
                index.add(self.vectors)
                return index
            cpu_index = self._cpu_approx(faiss, host, nlist, nprobe, hnsw_m, ef_search)
            if self.kind == "hnsw":  # faiss has no GPU HNSW; keep it on the host
                self.backend = "faiss-cpu"
                return cpu_index
            return faiss.index_cpu_to_gpu(self._gpu_resources, cfg.device, cpu_index)
        if self.kind == "exact":
            index = faiss.IndexFlatIP(d)
            index.add(host)
            return index
        return self._cpu_approx(faiss, host, nlist, nprobe, hnsw_m, ef_search)

    def _cpu_approx(self, faiss, host, nlist, nprobe, hnsw_m, ef_search):
        d, c = self.dim, self.num_classes
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
            index.add(host)
            return index
        nlist = nlist or max(1, min(4096, int(round(c ** 0.5))))
        if c < nlist:
            raise ValueError(f"ivf index: {c} fingerprints are fewer than nlist={nlist} lists")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(host)
        index.add(host)
        index.nprobe = min(nprobe, nlist)
        self._quantizer = quantizer  # the IVF index does not own it
        return index

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"search: queries must be [M, {self.dim}], got {tuple(queries.shape)}")
        device = queries.device
        if queries.shape[0] == 0:
            return (torch.empty(0, dtype=torch.float32, device=device),
                    torch.empty(0, dtype=torch.long, device=device))
        if self.backend == "torch":
            return torch_nearest(self.vectors.to(device), queries)
        q = queries.float().contiguous()
        if self.backend == "faiss-gpu" and q.is_cuda:
            dist, idx = self._index.search(q, 1)  # torch in, torch out (torch_utils)
            return dist[:, 0].float(), idx[:, 0].long()
        dist, idx = self._index.search(q.detach().cpu().numpy(), 1)
        best = torch.from_numpy(dist[:, 0]).to(device)
        rows = torch.from_numpy(idx[:, 0]).long().to(device)
        if bool((rows < 0).any()):  # approximate index probed only empty lists
            miss = rows < 0
            b2, r2 = torch_nearest(self.vectors.to(device), queries[miss])
            best[miss], rows[miss] = b2, r2
        return best, rows


__all__ = ["NearestIndex", "torch_nearest", "faiss_has_gpu", "BACKENDS", "KINDS"]

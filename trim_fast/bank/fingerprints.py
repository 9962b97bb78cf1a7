"""Fingerprint banks (SPEC section 2): the bank itself (:class:`FingerprintBank`, its file format
and checks), the float64 accumulator that builds one batch by batch, and the per-class sums they
share. The package docstring (:mod:`trim_fast.bank`) describes the whole."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from trim_fast.digests import bank_identity
from trim_fast.run.files import save_safetensors_atomic
from trim_fast.types import Fingerprints
from trim_fast.validation import check_finite

FORMAT = "trim_fast.fingerprint_bank"
FORMAT_VERSION = 2  # 2: header carries the model weights digest and the bank settings
_TENSOR_NAMES = ("classes", "vectors", "counts", "mass")
# A loaded row whose norm is off by more than this is not a fingerprint (corrupt file).
_UNIT_TOLERANCE = 1e-3


def _check_target_tokens(hidden: torch.Tensor, token_ids: torch.Tensor, alpha: torch.Tensor,
                         where: str) -> None:
    if not isinstance(hidden, torch.Tensor) or not isinstance(token_ids, torch.Tensor) \
            or not isinstance(alpha, torch.Tensor):
        raise TypeError(f"{where}: hidden, token_ids and alpha must be torch tensors")
    if hidden.ndim != 2 or token_ids.shape != hidden.shape[:1] or alpha.shape != hidden.shape[:1]:
        raise ValueError(
            f"{where}: expected hidden [M, d], token_ids [M], alpha [M]; got "
            f"{tuple(hidden.shape)}, {tuple(token_ids.shape)}, {tuple(alpha.shape)}")
    if not hidden.is_floating_point():
        raise TypeError(f"{where}: hidden states must be floating point, got {hidden.dtype}")
    if token_ids.is_floating_point() or token_ids.dtype == torch.bool:
        raise TypeError(f"{where}: token_ids must be an integer tensor, got {token_ids.dtype}")
    if token_ids.numel() and int(token_ids.min()) < 0:
        raise ValueError(f"{where}: token_ids must be >= 0 (padding must be masked out, not "
                         f"passed as a negative id)")
    check_finite(hidden, "hidden states")
    check_finite(alpha, "alpha")


def _unit_rows64(hidden: torch.Tensor) -> torch.Tensor:
    h = hidden.double()
    norm = h.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError(f"hidden states: {int((norm == 0).sum())} row(s) have zero norm; "
                         f"a zero hidden state has no direction to fingerprint")
    return h / norm


# Tokens per one-hot block of the deterministic (matmul) class sum.
_ONEHOT_BLOCK = 2048


def class_sums(token_ids: torch.Tensor, rows: torch.Tensor, *, use_matmul: bool | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted distinct ids, the per-id sums of ``rows [M, k]`` (float64) and the per-id counts.

    On the CPU a plain ``index_add_``. On CUDA ``index_add_`` of colliding indices uses atomics,
    whose order varies from run to run; there, each block of tokens is first reduced by a
    one-hot matmul (fixed order), so every ``index_add_`` sees distinct indices and the bank is
    the same bit for bit on every run. ``use_matmul`` forces either path (for tests).
    """
    classes, inverse = torch.unique(token_ids, sorted=True, return_inverse=True)
    c = classes.numel()
    counts = torch.zeros(c, dtype=torch.long, device=rows.device)
    counts.index_add_(0, inverse, torch.ones_like(inverse))
    sums = torch.zeros(c, rows.shape[1], dtype=torch.float64, device=rows.device)
    if use_matmul is None:
        use_matmul = rows.is_cuda
    if not use_matmul:
        sums.index_add_(0, inverse, rows.double())
        return classes, sums, counts
    for start in range(0, inverse.numel(), _ONEHOT_BLOCK):
        block = inverse[start:start + _ONEHOT_BLOCK]
        local, local_inv = torch.unique(block, sorted=True, return_inverse=True)
        onehot = torch.zeros(local.numel(), block.numel(), dtype=torch.float64, device=rows.device)
        onehot[local_inv, torch.arange(block.numel(), device=rows.device)] = 1.0
        sums.index_add_(0, local, onehot @ rows[start:start + _ONEHOT_BLOCK].double())
    return classes, sums, counts


class FingerprintAccumulator:
    """Per-class sums ``sum alpha * h_hat`` (float64) over target batches; ``finish`` builds the bank.

    ``add`` may be called any number of times (one call per target batch); the result equals
    :meth:`FingerprintBank.build` on the concatenation, up to float64 summation order.
    """

    def __init__(self, d: int, *, device: torch.device | str = "cpu") -> None:
        if int(d) <= 0:
            raise ValueError(f"FingerprintAccumulator: hidden size d must be positive, got {d}")
        self.d = int(d)
        self.device = torch.device(device)
        self.classes = torch.empty(0, dtype=torch.long, device=self.device)
        self.sums = torch.empty(0, self.d, dtype=torch.float64, device=self.device)
        self.counts = torch.empty(0, dtype=torch.long, device=self.device)
        self.mass = torch.empty(0, dtype=torch.float64, device=self.device)

    def add(self, hidden: torch.Tensor, token_ids: torch.Tensor, alpha: torch.Tensor) -> None:
        """Add counted target tokens, flattened: ``hidden [M, d]``, ``token_ids [M]``, ``alpha [M]``."""
        _check_target_tokens(hidden, token_ids, alpha, "FingerprintAccumulator.add")
        if hidden.shape[1] != self.d:
            raise ValueError(f"FingerprintAccumulator.add: hidden size {hidden.shape[1]} differs "
                             f"from the accumulator's d={self.d}")
        if hidden.shape[0] == 0:
            return
        hidden = hidden.to(self.device)
        token_ids = token_ids.to(self.device, torch.long)
        alpha64 = alpha.to(self.device, torch.float64)
        # Last column carries alpha, so the class masses are summed with the vectors.
        weighted = torch.cat([alpha64[:, None] * _unit_rows64(hidden), alpha64[:, None]], dim=1)
        new_classes, new_sums, new_counts = class_sums(token_ids, weighted)
        # Merge old and new classes in one sorted set; each side's rows are unique, so the two
        # index_add_ calls have no colliding indices (deterministic on CUDA too).
        classes, inverse = torch.unique(torch.cat([self.classes, new_classes]), sorted=True,
                                        return_inverse=True)
        old_rows, new_rows = inverse[: self.classes.numel()], inverse[self.classes.numel():]
        c = classes.numel()
        sums = torch.zeros(c, self.d, dtype=torch.float64, device=self.device)
        sums.index_add_(0, old_rows, self.sums)
        sums.index_add_(0, new_rows, new_sums[:, :-1])
        counts = torch.zeros(c, dtype=torch.long, device=self.device)
        counts.index_add_(0, old_rows, self.counts)
        counts.index_add_(0, new_rows, new_counts)
        mass = torch.zeros(c, dtype=torch.float64, device=self.device)
        mass.index_add_(0, old_rows, self.mass)
        mass.index_add_(0, new_rows, new_sums[:, -1])
        self.classes, self.sums, self.counts, self.mass = classes, sums, counts, mass

    @property
    def num_tokens(self) -> int:
        return int(self.counts.sum())

    def finish(self, meta: dict | None = None, *, min_norm: float = 1e-6,
               center: torch.Tensor | None = None) -> "FingerprintBank":
        """Normalise the sums; classes whose sum has norm < ``min_norm`` are dropped (SPEC 2).
        ``center``: the mean state the added hidden states were centred by (kept with the bank,
        so that candidates are centred by the same one)."""
        if self.classes.numel() == 0:
            raise ValueError("FingerprintBank: the target set has no counted tokens")
        norm = self.sums.norm(dim=-1)
        if not bool(torch.isfinite(norm).all()):  # NaN would fail ">= min_norm" and drop silently
            raise ValueError("FingerprintBank: non-finite hidden states or alpha reached the class sums")
        keep = norm >= min_norm
        if not bool(keep.any()):
            raise ValueError("FingerprintBank: every class has a zero weighted sum; no fingerprint")
        vectors = (self.sums[keep] / norm[keep, None]).float()
        meta = dict(meta or {})
        meta.setdefault("min_norm", min_norm)
        return FingerprintBank(
            classes=self.classes[keep].cpu(),
            vectors=vectors.cpu(),
            counts=self.counts[keep].cpu(),
            mass=self.mass[keep].float().cpu(),
            meta=meta,
            center=None if center is None else center.detach().float().cpu(),
        )


@dataclass(eq=False)
class FingerprintBank(Fingerprints):
    """``classes [C]`` (sorted token ids), unit ``vectors [C, d]`` fp32, ``counts [C]``, ``mass [C]``
    and ``meta`` (JSON-able: task, model, tokenizer digest, settings); ``center [d]``: the mean
    state the hidden states were centred by before fingerprinting (``None``: not centred). A
    :class:`Fingerprints`, so the oracle takes it as it is."""

    meta: dict = field(default_factory=dict)
    center: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_bank_tensors(self.classes, self.vectors, self.counts, self.mass, "FingerprintBank")
        if self.center is not None and (tuple(self.center.shape) != (self.dim,)
                                        or not bool(torch.isfinite(self.center).all())):
            raise ValueError(f"FingerprintBank: center must be a finite [{self.dim}] vector, got "
                             f"{tuple(self.center.shape)}")
        try:
            json.dumps(self.meta)
        except TypeError as exc:
            raise TypeError(f"FingerprintBank: meta must be JSON-serialisable ({exc})") from None
        self._row_table: torch.Tensor | None = None
        self._tables: dict = {}

    # -- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, hidden: torch.Tensor, token_ids: torch.Tensor, alpha: torch.Tensor, *,
              meta: dict | None = None, min_norm: float = 1e-6) -> "FingerprintBank":
        """SPEC 2 over counted target tokens, flattened (``hidden [M, d]``, ``token_ids [M]``,
        ``alpha [M]``); the same classes and vectors as ``reference.build_fingerprints``."""
        _check_target_tokens(hidden, token_ids, alpha, "FingerprintBank.build")
        if hidden.shape[0] == 0:
            raise ValueError("FingerprintBank.build: the target set has no counted tokens")
        acc = FingerprintAccumulator(hidden.shape[1], device=hidden.device)
        acc.add(hidden, token_ids, alpha)
        return acc.finish(meta, min_norm=min_norm)

    # -- shape ----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.classes.numel())

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return self.num_classes

    def row_of_token(self, vocab_size: int | None = None) -> torch.Tensor:
        """``LongTensor [V]``: the bank row of each token id, ``-1`` for ids without a fingerprint.
        ``vocab_size=None`` gives the shortest table (``max class + 1``)."""
        top = int(self.classes.max()) + 1
        if vocab_size is None:
            if self._row_table is None:
                self._row_table = self._make_row_table(top)
            return self._row_table
        if vocab_size < top:
            raise ValueError(f"row_of_token: vocab_size {vocab_size} is smaller than the bank's "
                             f"largest class id + 1 ({top}); was the bank built with another tokenizer?")
        return self._make_row_table(int(vocab_size))

    def _make_row_table(self, size: int) -> torch.Tensor:
        table = torch.full((size,), -1, dtype=torch.long, device=self.classes.device)
        table[self.classes] = torch.arange(self.num_classes, device=self.classes.device)
        return table

    def to(self, device: torch.device | str) -> "FingerprintBank":
        return FingerprintBank(self.classes.to(device), self.vectors.to(device),
                               self.counts.to(device), self.mass.to(device), dict(self.meta),
                               None if self.center is None else self.center.to(device))

    def tables(self, device: torch.device | str, *, index_backend: str = "auto") -> "BankTables":
        """What scoring reads, on ``device``: fp32 ``vectors``, the ``row_table`` and the
        nearest-fingerprint index, built once per device and kept with the bank."""
        from trim_fast.ops.nearest import NearestIndex

        key = (str(torch.device(device)), index_backend)
        if key not in self._tables:
            vectors = self.vectors.to(device).float().contiguous()
            self._tables[key] = BankTables(vectors, self.row_of_token().to(device),
                                           NearestIndex(vectors, backend=index_backend))
        return self._tables[key]

    def digest(self) -> str:
        """A hash of the bank's classes, vectors and center: what a score shard was computed
        against."""
        arrays = [self.classes.to(torch.int64), self.vectors.float()]
        arrays += [] if self.center is None else [self.center.float()]
        return bank_identity(a.cpu().numpy().tobytes() for a in arrays)

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file (tensors + JSON header in its metadata), atomically."""

        path = os.fspath(path)
        tensors = {
            "classes": self.classes.detach().to("cpu", torch.int64).contiguous(),
            "vectors": self.vectors.detach().to("cpu", torch.float32).contiguous(),
            "counts": self.counts.detach().to("cpu", torch.int64).contiguous(),
            "mass": self.mass.detach().to("cpu", torch.float32).contiguous(),
        }
        if self.center is not None:
            tensors["center"] = self.center.detach().to("cpu", torch.float32).contiguous()
        header = {"format": FORMAT, "version": str(FORMAT_VERSION), "meta": json.dumps(self.meta)}
        save_safetensors_atomic(tensors, os.fspath(path), header)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu") -> "FingerprintBank":
        """Read a bank written by :meth:`save` (whether it fits a run is the caller's check:
        :meth:`trim_fast.Selector.score` refuses a bank of another model or other settings)."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"fingerprint bank {path!r} does not exist")
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                names = set(f.keys())
                tensors = {name: f.get_tensor(name) for name in (*_TENSOR_NAMES, "center")
                           if name in names}
        except Exception as exc:  # noqa: BLE001 - every parse failure is "not a bank file"
            raise ValueError(f"{path!r} is not a readable fingerprint bank (corrupt or not a "
                             f"safetensors file): {exc}") from None
        if header.get("format") != FORMAT:
            raise ValueError(f"{path!r} is a safetensors file but not a trim_fast fingerprint bank "
                             f"(header format {header.get('format')!r})")
        if header.get("version") != str(FORMAT_VERSION):
            raise ValueError(f"{path!r}: bank format version {header.get('version')!r} is not "
                             f"supported (this build reads version {FORMAT_VERSION})")
        missing = [n for n in _TENSOR_NAMES if n not in tensors]
        if missing:
            raise ValueError(f"{path!r}: fingerprint bank lacks tensor(s) {missing}")
        try:
            meta = json.loads(header.get("meta", "{}"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path!r}: the bank's JSON header is corrupt ({exc})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{path!r}: the bank's JSON header must be an object")
        _check_bank_tensors(tensors["classes"], tensors["vectors"], tensors["counts"],
                            tensors["mass"], f"{path!r}", check_unit=True)
        try:
            bank = cls(tensors["classes"], tensors["vectors"], tensors["counts"], tensors["mass"],
                       meta, tensors.get("center"))
        except ValueError as exc:
            raise ValueError(f"{path!r}: {exc}") from None
        return bank if torch.device(device).type == "cpu" else bank.to(device)


def _check_bank_tensors(classes, vectors, counts, mass, where, *, check_unit: bool = False) -> None:
    for name, t in (("classes", classes), ("vectors", vectors), ("counts", counts), ("mass", mass)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a torch tensor")
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"{where}: vectors must be [classes, d] with d > 0, got {tuple(vectors.shape)}")
    c = vectors.shape[0]
    if c == 0:
        raise ValueError(f"{where}: the bank has no fingerprints (zero classes)")
    for name, t in (("classes", classes), ("counts", counts), ("mass", mass)):
        if tuple(t.shape) != (c,):
            raise ValueError(f"{where}: {name} must have shape [{c}] to match vectors "
                             f"{tuple(vectors.shape)}, got {tuple(t.shape)}")
    if classes.is_floating_point() or classes.dtype == torch.bool:
        raise ValueError(f"{where}: classes must be integer token ids, got {classes.dtype}")
    if not vectors.is_floating_point():
        raise ValueError(f"{where}: vectors must be floating point, got {vectors.dtype}")
    if int(classes.min()) < 0:
        raise ValueError(f"{where}: classes contain a negative token id")
    if c > 1 and not bool((classes[1:] > classes[:-1]).all()):
        raise ValueError(f"{where}: classes must be strictly increasing token ids")
    if not bool(torch.isfinite(vectors).all()):
        raise ValueError(f"{where}: vectors contain NaN/Inf")
    if check_unit:
        norms = vectors.double().norm(dim=-1)
        if bool(((norms - 1).abs() > _UNIT_TOLERANCE).any()):
            raise ValueError(f"{where}: fingerprint vectors are not unit rows (norms in "
                             f"[{float(norms.min()):.4g}, {float(norms.max()):.4g}])")


@dataclass
class BankTables:
    """A bank as scoring reads it, on one device: fp32 unit ``vectors [C, d]``, the ``row_table
    [V]`` (token id -> row, -1 unseen) and the ``nearest`` index over ``vectors``."""

    vectors: torch.Tensor
    row_table: torch.Tensor
    nearest: object


def settings_conflict(banks: dict) -> str | None:
    """Why the banks of one run cannot score one pool together: the settings in their headers
    differ (named), or ``None``. Needs no model, so a run can refuse before loading one."""
    names = list(banks)
    settings = [banks[n].meta.get("settings") for n in names]
    for name, s in zip(names, settings):
        if not isinstance(s, dict):
            return f"bank {name!r} records no settings in its header; rebuild it with this version"
    for name, s in zip(names[1:], settings[1:]):
        diff = sorted(k for k in set(s) | set(settings[0]) if s.get(k) != settings[0].get(k))
        if diff:
            pairs = ", ".join(f"{k}: {settings[0].get(k)!r} vs {s.get(k)!r}" for k in diff)
            return (f"banks {names[0]!r} and {name!r} were built with different settings "
                    f"({pairs}); build every bank of one run with the same settings")
    return None


__all__ = ["BankTables", "FingerprintBank", "FingerprintAccumulator", "class_sums",
           "settings_conflict", "FORMAT"]

"""Fingerprint banks (SPEC section 2): one unit vector per token class of a target task.

A bank is a dense ``[C, d]`` fp32 matrix of unit rows plus the sorted class ids, so a candidate
token with a fingerprint is a gather (``row_of_token``), not a search. Banks are built in one
call (:meth:`FingerprintBank.build`) or streamed batch by batch (:class:`FingerprintAccumulator`),
both accumulating in float64 exactly as :func:`trim_fast.reference.build_fingerprints`; building
one from a model and target examples is :func:`trim_fast.bank.build.fingerprint_tokens`.

On disk a bank is a safetensors file; its JSON header (the task, the model's name and weights
digest, the tokenizer digest and the settings it was built with) lives in the safetensors
metadata, so a bank is refused where it does not fit the run. Nothing is ever unpickled.
"""
from trim_fast._lazy import lazy_exports

_EXPORTS = {name: ".fingerprints" for name in (
    "BankTables", "FingerprintBank", "FingerprintAccumulator", "class_sums", "settings_conflict",
    "FORMAT", "FORMAT_VERSION")}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

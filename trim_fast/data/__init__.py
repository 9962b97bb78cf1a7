"""Stage 1 of the pipeline: reading records (sources, shapes) and rendering them to counted tokens.
Names are imported from their modules on first use (so importing one module of this package
does not import the others)."""
import importlib

_EXPORTS = {
    "FORMATS": "formats", "DataError": "formats", "Example": "formats",
    "detect_format": "formats", "record_to_example": "formats",
    "SCOPES": "render", "Tokenized": "render", "render_messages": "render",
    "tokenize_example": "render", "tokenizer_digest": "render",
    "Records": "sources", "open_records": "sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

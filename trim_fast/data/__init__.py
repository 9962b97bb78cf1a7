"""Stage 1 of the pipeline: reading records (sources, shapes) and rendering them to counted tokens.
Names are imported from their modules on first use."""
from trim_fast._lazy import lazy_exports

_EXPORTS = {
    "FORMATS": ".formats", "DataError": ".formats", "Example": ".formats",
    "detect_format": ".formats", "record_to_example": ".formats",
    "SCOPES": ".render", "Tokenized": ".render", "render_messages": ".render",
    "tokenize_example": ".render", "tokenizer_digest": ".render",
    "Records": ".records", "open_records": ".sources", "task_names": ".tasks",
    "open_tasks": ".tasks",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

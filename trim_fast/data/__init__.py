"""Stage 1 of the pipeline: reading records (sources, shapes) and rendering them to counted tokens."""
from trim_fast.data.formats import FORMATS, DataError, Example, detect_format, record_to_example
from trim_fast.data.render import SCOPES, Tokenized, render_messages, tokenize_example, tokenizer_digest
from trim_fast.data.sources import Records, open_records

__all__ = ["FORMATS", "DataError", "Example", "detect_format", "record_to_example", "open_records",
           "Records", "SCOPES", "Tokenized", "render_messages", "tokenize_example",
           "tokenizer_digest"]

"""Stage 1 of the pipeline: reading records and rendering them to counted tokens."""
from trim_fast.data.formats import DataError, Example, load_examples, read_examples
from trim_fast.data.render import SCOPES, Tokenized, tokenize_example, tokenizer_digest
from trim_fast.data.sources import Records, open_records

__all__ = ["DataError", "Example", "load_examples", "open_records", "read_examples", "Records",
           "SCOPES", "Tokenized", "tokenize_example", "tokenizer_digest"]

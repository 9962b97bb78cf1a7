"""Stage 1 of the pipeline: reading examples and rendering them to counted tokens."""
from trim_fast.data.formats import DataError, Example, load_examples, read_examples
from trim_fast.data.render import SCOPES, Tokenized, tokenize_example, tokenizer_fingerprint

__all__ = ["DataError", "Example", "load_examples", "read_examples", "SCOPES", "Tokenized",
           "tokenize_example", "tokenizer_fingerprint"]

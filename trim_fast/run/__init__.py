"""The run machinery: atomic files, the resumable work directory, ranks under ``torchrun`` and
the output files of a selection."""

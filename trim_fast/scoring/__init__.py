"""Scoring the candidate pool (SPEC 3): pool IDF, matching every counted token against the task
banks and pooling per example, streamed in resumable chunks."""

"""History: what the pipeline computed, minute by minute, kept in an analytical store (store.py)."""

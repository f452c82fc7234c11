"""Corpus stage: documents from local files (txt / csv / jsonl) → fixed-length token contexts."""

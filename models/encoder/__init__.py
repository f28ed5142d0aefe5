"""Text encoders: embeddings, text classification and reranking.

`model.py` the loader (sub-kind from config), `text.py` the shared text-encoder base, `st.py`
sentence-transformers pipelines, `embed.py`, `classify.py`, `trace.py` (the TorchScript fast path).
"""

from models.encoder.model import load

__all__ = ["load"]

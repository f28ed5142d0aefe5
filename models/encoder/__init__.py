"""Text encoders: embeddings, text classification and reranking.

`model.py` the loader (sub-kind from config), `text.py` the shared text-encoder base, `st.py`
sentence-transformers pipelines, `embed.py`, `classify.py`, `trace.py` (the TorchScript fast path).

The routers build requests from `TextItem` (one input of a request), the one type they share with this package.
"""

from models.encoder.model import load
from models.encoder.text import TextItem

__all__ = ["TextItem", "load"]

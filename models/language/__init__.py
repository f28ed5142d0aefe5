"""Chat and text completions: causal LMs (transformers folders, GGUF files) and vision-language chat.

`loader.py` the category's loader (which class serves a model), `model.py` the category class, `engine.py`
the continuous-batching decode loop, `sampling.py`, `detokenize.py`, `templates.py` (chat templates),
`tools.py` (tool-call parsing), `structured.py` (llguidance grammars), `weights.py` + `gguf.py` (weights,
GGUF conversion cache), `vision_chat.py` (image-text-to-text chat). The engine's model calls are a backend:
`transformers_backend.py`, or `llamacpp.py` for GGUF files in llama.cpp (`llamacpp_model.py` its class).
`llama_cpp_missing()` says why llama.cpp is unavailable (None when it is), for /health.
"""

from models.language.llamacpp import available as llama_cpp_missing
from models.language.loader import load

__all__ = ["llama_cpp_missing", "load"]

"""Chat and text completions: causal LMs (transformers folders, GGUF files) and vision-language chat.

`loader.py` the category's loader (which class serves a model), `model.py` the category class, `engine.py`
the continuous-batching decode loop, `sampling.py`, `detokenize.py`, `templates.py` (chat templates),
`tools.py` (tool-call parsing), `structured.py` (llguidance grammars), `weights.py` + `gguf.py` (weights,
GGUF conversion cache), `vision_chat.py` (image-text-to-text chat).
"""

from models.language.loader import load

__all__ = ["load"]

"""Chat and text completions: causal LMs (transformers folders, GGUF files) and vision-language chat.

`model.py` the category class and its loader, `engine.py` the continuous-batching decode loop,
`sampling.py`, `detokenize.py`, `templates.py` (chat templates), `tools.py` (tool-call parsing),
`structured.py` (llguidance grammars), `loading.py` + `gguf.py` (weights, GGUF conversion cache),
`vision_chat.py` (image-text-to-text chat).
"""

from models.language.model import load

__all__ = ["load"]

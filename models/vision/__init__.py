"""Vision: image classification and CLIP-style zero-shot classification (`model.py`).
"""

from models.vision.model import load

__all__ = ["load"]

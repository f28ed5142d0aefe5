"""Image to text: captioning and visual question answering (BLIP, image-text-to-text).

`model.py` the category class and loader, `vlm.py` (helpers shared with vision and vision chat).
"""

from models.multimodal.model import load

__all__ = ["load"]

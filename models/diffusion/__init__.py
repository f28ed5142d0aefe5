"""Images: text-to-image, inpainting and image-to-image diffusers pipelines.

`model.py` the category class, `loading.py` (pipeline choice and options), `schedulers.py`.
"""

from models.diffusion.model import load

__all__ = ["load"]

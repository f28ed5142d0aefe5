"""Images: text-to-image, inpainting and image-to-image diffusers pipelines.

`model.py` the category class, `loading.py` (pipeline choice and options), `schedulers.py`.

The router shares the request and result types with this package (`ImageJob`, `ImageResult`,
`GenerationCancelled`) and checks scheduler names with `known_names` / `canonical_name` before any model loads.
"""

from models.diffusion.model import GenerationCancelled, ImageJob, ImageResult, load
from models.diffusion.schedulers import canonical_name, known_names

__all__ = ["GenerationCancelled", "ImageJob", "ImageResult", "canonical_name", "known_names", "load"]

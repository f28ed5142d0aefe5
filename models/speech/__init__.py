"""Text to speech: VITS (MMS-TTS), SpeechT5 with its HiFi-GAN vocoder, Bark, and other transformers
text-to-audio models.

`loader.py` reads the sub-kind from config.json and loads it; `model.py` holds the category class they share
and one request's synthesis (pieces spoken in turn, joined without clicks); `vits.py`, `speecht5.py`,
`bark.py`, `pipeline.py` the sub-kinds; `text.py` the sentence splitting, `voices.py` voices and speaker
embeddings, `encode.py` the audio formats.
"""

from models.speech.encode import CONTENT_TYPES, FORMATS, StreamEncoder, check_format, encode_file, output_rate
from models.speech.loader import load
from models.speech.model import SpeechModel, Synthesis

__all__ = ["CONTENT_TYPES", "FORMATS", "SpeechModel", "StreamEncoder", "Synthesis", "check_format",
           "encode_file", "load", "output_rate"]

"""Speech to text: Whisper-family and CTC (Wav2Vec2) models.

`loader.py` reads the sub-kind from config.json and loads it, `model.py` the category class both sub-kinds
share, `whisper.py`, `ctc.py`.
"""

from models.audio.loader import load

__all__ = ["load"]

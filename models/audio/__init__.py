"""Speech to text: Whisper-family and CTC (Wav2Vec2) models.

`model.py` the category class and loader, `whisper.py`, `ctc.py`.
"""

from models.audio.model import load

__all__ = ["load"]

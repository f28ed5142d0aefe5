"""Voices: how a request's `voice` is matched to what a model offers, and SpeechT5's speaker-embedding file.

SpeechT5 speaks with an x-vector speaker embedding. A model folder offers voices with a file
`speaker_embeddings.safetensors` next to its config.json: one float32 vector of the model's
`speaker_embedding_dim` (512 for microsoft/speecht5_tts) per voice, the tensor's name being the voice's name.
Without the file the model has one voice (an all-zero embedding). safetensors holds plain tensors only (no
pickled code), so a downloaded file is safe to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import InvalidRequest

SPEAKER_FILE = "speaker_embeddings.safetensors"
DEFAULT = "default"
LISTED = 24  # voices named in an error message; the rest are counted


def read_speaker_embeddings(folder: Path, dim: int) -> dict[str, Any]:
    """Voice name -> float32 tensor of shape (dim,) from the folder's speaker file ({} when it has none)."""
    path = folder / SPEAKER_FILE
    if not path.exists():
        return {}
    from safetensors.torch import load_file

    voices: dict[str, Any] = {}
    for name, tensor in load_file(str(path)).items():
        vector = tensor.float().reshape(-1)
        if vector.numel() != dim:
            raise ValueError(f"{path}: voice '{name}' has {vector.numel()} values; the model wants {dim}")
        voices[name] = vector
    return dict(sorted(voices.items()))


def save_speaker_embeddings(folder: Path, voices: dict[str, Any]) -> Path:
    """Write voice name -> vector (torch tensors or numpy arrays) as the folder's speaker file."""
    import torch
    from safetensors.torch import save_file

    path = Path(folder) / SPEAKER_FILE
    save_file({name: torch.as_tensor(v, dtype=torch.float32).reshape(-1).contiguous() for name, v in voices.items()},
              str(path))
    return path


def pick_voice(voice: str | None, voices: tuple[str, ...], default: str | None, model: str) -> tuple[str | None,
                                                                                                       bool]:
    """(the voice to speak with, whether the request's `voice` was ignored).

    A model with one voice takes any value and reports it ignored; with several, no voice (or "default")
    is the model's default and an unknown one is a 400 listing the valid ones.
    """
    if not voices:
        return None, voice not in (None, DEFAULT)
    if voice is None or voice == DEFAULT:
        return default, False
    if voice in voices:
        return voice, False
    shown = ", ".join(voices[:LISTED]) + (f", ... ({len(voices)} in all)" if len(voices) > LISTED else "")
    raise InvalidRequest(f"Unknown voice '{voice}' for model '{model}'; its voices are: {shown} (or 'default').",
                         param="voice")

"""Transcript shapes and their wire formats: json, text, srt, vtt and verbose_json (API.md, Audio).

Models return a `Transcript`; routers turn it into the requested `response_format` here. No torch here.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPES = {
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


@dataclass
class Word:
    """One word with its start and end in seconds."""

    word: str
    start: float
    end: float


@dataclass
class Segment:
    """One timed piece of the transcript."""

    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    seek: int = 0  # the decoding window's start, in feature frames (Whisper) or samples/160 (CTC)


@dataclass
class Transcript:
    """What a speech-to-text model returns for one audio input."""

    text: str
    segments: list[Segment]
    language: str | None = None  # full lowercase English name ("english"), None when unknown
    words: list[Word] | None = None  # None when the model cannot give word timings
    temperature: float = 0.0


def clean_text(text: str) -> str:
    """Text of one cue: stripped, no cue-separator arrow, no blank lines (they end a cue)."""
    text = text.strip().replace("-->", "->")
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS,mmm (srt) or HH:MM:SS.mmm (vtt); hours keep growing past 99."""
    millis = max(0, int(round(seconds * 1000)))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cues(segments: list[Segment]) -> list[tuple[float, float, str]]:
    cues = []
    for seg in segments:
        text = clean_text(seg.text)
        if text:
            cues.append((seg.start, max(seg.end, seg.start), text))
    return cues


def to_srt(segments: list[Segment]) -> str:
    """A SubRip file: numbered cues separated by blank lines."""
    blocks = [f"{i}\n{timestamp(s, ',')} --> {timestamp(e, ',')}\n{text}\n"
              for i, (s, e, text) in enumerate(_cues(segments), start=1)]
    return "\n".join(blocks)


def to_vtt(segments: list[Segment]) -> str:
    """A WebVTT file: the WEBVTT header, then cues separated by blank lines."""
    blocks = [f"{timestamp(s, '.')} --> {timestamp(e, '.')}\n{text}\n" for s, e, text in _cues(segments)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: raw UTF-8 length over zlib-compressed length."""
    raw = text.encode("utf-8")
    return round(len(raw) / len(zlib.compress(raw)), 4) if raw else 0.0


def usage(duration: float) -> dict[str, Any]:
    """OpenAI's duration-based usage object (whole seconds, rounded up)."""
    return {"type": "duration", "seconds": int(math.ceil(duration))}


def to_verbose_json(transcript: Transcript, task: str, duration: float, with_words: bool) -> dict[str, Any]:
    """OpenAI's verbose_json: task, language, duration, text, segments (and words when asked)."""
    segments = [{
        "id": i,
        "seek": seg.seek,
        "start": round(seg.start, 3),
        "end": round(max(seg.end, seg.start), 3),
        "text": seg.text,
        "tokens": list(seg.tokens),
        "temperature": transcript.temperature,
        "avg_logprob": None,
        "compression_ratio": compression_ratio(seg.text),
        "no_speech_prob": None,
    } for i, seg in enumerate(transcript.segments)]
    body: dict[str, Any] = {
        "task": task,
        "language": transcript.language,
        "duration": round(duration, 3),
        "text": transcript.text.strip(),
        "segments": segments,
    }
    if with_words:
        body["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(max(w.end, w.start), 3)}
                         for w in transcript.words or []]
    body["usage"] = usage(duration)
    return body

"""Whisper-family speech models: transcription and translation, language detection, timestamps, long audio.

The processor and `model.generate` are called directly (the ASR pipeline's ffmpeg path is not used):
audio longer than one 30 s window goes through transformers' sequential long-form decoding, whose segments
carry absolute, increasing times. The source language is the one given, else the one Whisper detects on the
first window; translation keeps that source language and asks for the `translate` task (it never forces the
source to English).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.contract import LoadContext
from core.errors import InvalidRequest
from core.subtitles import Segment, Transcript, Word
from models.audio.model import SpeechModel, tidy_segments, tidy_words


class _Stalled(Exception):
    """Long-form decoding stopped moving forward."""


class WhisperSpeech(SpeechModel):
    """A Whisper-family checkpoint (`WhisperForConditionalGeneration`)."""

    kind = "whisper"
    capabilities = frozenset({"transcribe", "translate"})
    honours = frozenset({"language", "prompt", "temperature"})

    @classmethod
    def from_folder(cls, model_id: str, ctx: LoadContext, folder: Path) -> WhisperSpeech:
        from transformers import AutoProcessor, WhisperForConditionalGeneration

        processor = AutoProcessor.from_pretrained(folder)
        model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=ctx.torch_dtype())
        return cls(model_id, ctx, model.to(ctx.device).eval(), processor)

    def __init__(self, model_id: str, ctx: LoadContext, model: Any, processor: Any) -> None:
        super().__init__(model_id, ctx, model, processor)
        gen = model.generation_config
        lang_to_id: dict[str, int] = dict(getattr(gen, "lang_to_id", None) or {})
        self.multilingual = bool(getattr(gen, "is_multilingual", bool(lang_to_id))) and bool(lang_to_id)
        if not self.multilingual:
            self.capabilities = frozenset({"transcribe"})  # English-only checkpoints cannot translate
        self.lang_to_id = lang_to_id
        self.id_to_code = {v: k.strip("<|>") for k, v in lang_to_id.items()}
        tokenizer = processor.tokenizer
        # Text tokens come first in Whisper's vocabulary; <|endoftext|>, the specials and timestamps follow.
        self.text_limit = min(tokenizer.all_special_ids) if tokenizer.all_special_ids else tokenizer.eos_token_id
        self.word_timestamps = bool(getattr(gen, "alignment_heads", None))
        self.max_prompt_tokens = int(model.config.max_target_positions) // 2 - 1
        self.window_frames = int(getattr(processor.feature_extractor, "nb_max_frames", 3000))
        self.window_samples = int(getattr(processor.feature_extractor, "n_samples", 30 * self.sampling_rate))

    # ----- language -------------------------------------------------------------------------------
    def language_code(self, language: str | None) -> str | None:
        """The Whisper code ('en') for a code, an English name or a token; 400 (param language) if unknown."""
        if not language or not language.strip():
            return None
        from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

        wanted = language.strip().lower().strip("<|>")
        code = wanted if wanted in LANGUAGES else TO_LANGUAGE_CODE.get(wanted)
        if code is None:
            code = wanted.split("-")[0].split("_")[0]  # en-US, pt_BR
            code = code if code in LANGUAGES else None
        if not self.multilingual:
            if code != "en":
                raise InvalidRequest(f"Model '{self.model_id}' is English-only; it cannot take language "
                                     f"'{language}'.", param="language")
            return code
        if code is None or f"<|{code}|>" not in self.lang_to_id:
            raise InvalidRequest(f"Unsupported language '{language}' for model '{self.model_id}'; use an "
                                 "ISO-639-1 code such as 'en' or 'de'.", param="language")
        return code

    @staticmethod
    def language_name(code: str | None) -> str | None:
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        return LANGUAGES.get(code) if code else None

    def _detect(self, features: Any) -> str | None:
        lang_ids = self.model.detect_language(features[..., :self.window_frames])
        return self.id_to_code.get(int(lang_ids[0]))

    # ----- transcription --------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str) -> Any:
        import torch

        try:
            ids = self.processor.tokenizer.get_prompt_ids(prompt, return_tensors="pt")
        except ValueError as exc:
            raise InvalidRequest(f"Invalid prompt: {exc}", param="prompt") from exc
        body = ids[1:][-self.max_prompt_tokens:]  # as OpenAI: only the prompt's last tokens count
        return torch.cat([ids[:1], body]).to(self.model.device)

    def transcribe(self, samples: np.ndarray, *, task: str = "transcribe", language: str | None = None,
                   prompt: str | None = None, temperature: float | None = None, timestamps: bool = False,
                   words: bool = False) -> Transcript:
        import torch

        code = self.language_code(language)
        duration = len(samples) / float(self.sampling_rate)
        long_form = len(samples) > self.window_samples
        extra = {"truncation": False, "padding": "longest"} if long_form else {}
        inputs = self.processor.feature_extractor(samples, sampling_rate=self.sampling_rate, return_tensors="pt",
                                                  return_attention_mask=True, **extra)
        features = inputs.input_features.to(self.model.device, self.model.dtype)
        want_words = words and self.word_timestamps
        kwargs: dict[str, Any] = {
            "attention_mask": inputs.attention_mask.to(self.model.device),
            "return_segments": True,
            "return_timestamps": bool(timestamps or long_form or want_words),
            "temperature": float(temperature or 0.0),  # 0 = greedy; > 0 samples at that temperature
        }
        if prompt and prompt.strip():
            kwargs["prompt_ids"] = self._prompt_ids(prompt)
        if want_words:
            kwargs["return_token_timestamps"] = True
        config = self.model.config
        attn = config._attn_implementation
        with torch.inference_mode():
            if self.multilingual:
                code = code or self._detect(features)
                kwargs.update(task=task, language=code)
            try:
                raw = self._generate(features, kwargs, long_form)
            finally:
                config._attn_implementation = attn  # token timestamps switch the model to eager attention
        segments, word_list = self._segments(raw, want_words)
        segments = tidy_segments(segments, duration)
        if not self.multilingual:
            code = "en"
        return Transcript(
            text="".join(s.text for s in segments).strip(),
            segments=segments,
            language="english" if task == "translate" else self.language_name(code),
            words=tidy_words(word_list, duration) if want_words else None,
            temperature=float(temperature or 0.0),
        )

    def _generate(self, features: Any, kwargs: dict[str, Any], long_form: bool) -> list[dict[str, Any]]:
        """transformers' generate; raw segments (dicts with start, end, tokens[, token_timestamps]).

        Short audio makes exactly one decoding call. Long audio uses sequential long-form decoding; should
        the model keep predicting a window that does not move forward (it would loop forever), the audio
        is decoded instead in fixed 30 s windows with their offsets added.
        """
        if not long_form:
            out = self.model.generate(features, force_unique_generate_call=True, **kwargs)
            return list(out["segments"][0])
        seen: dict[str, Any] = {"seek": -1, "stalls": 0}

        def monitor(progress: Any) -> None:
            seek = int(progress[0, 0])
            seen["stalls"] = seen["stalls"] + 1 if seek == seen["seek"] else 0
            seen["seek"] = seek
            if seen["stalls"] >= 3:
                raise _Stalled

        try:
            return list(self.model.generate(features, monitor_progress=monitor, **kwargs)["segments"][0])
        except _Stalled:
            pass
        segments: list[dict[str, Any]] = []
        mask = kwargs.pop("attention_mask")
        frames = int(mask.sum())
        for lo in range(0, frames, self.window_frames):
            window = features[..., lo:lo + self.window_frames]
            if window.shape[-1] < self.window_frames:
                window = self._pad_window(window)
            window_mask = mask[..., :self.window_frames].clone()
            window_mask[..., min(frames - lo, self.window_frames):] = 0
            out = self.model.generate(window, attention_mask=window_mask, force_unique_generate_call=True,
                                      **kwargs)
            offset = lo * 0.01  # feature frames are 10 ms apart
            for item in out["segments"][0]:
                end = min(float(item["end"]), (min(frames - lo, self.window_frames)) * 0.01)
                shifted = {**item, "start": float(item["start"]) + offset, "end": end + offset}
                if item.get("token_timestamps") is not None:
                    shifted["token_timestamps"] = item["token_timestamps"] + offset
                segments.append(shifted)
        return segments

    def _pad_window(self, window: Any) -> Any:
        """Pad a last, short window of log-mel features with the features of silence."""
        import torch

        silence = self.processor.feature_extractor(np.zeros(self.window_samples, dtype=np.float32),
                                                   sampling_rate=self.sampling_rate, return_tensors="pt")
        pad = silence.input_features[..., window.shape[-1]:].to(window.device, window.dtype)
        return torch.cat([window, pad], dim=-1)

    def _segments(self, raw: list[dict[str, Any]], want_words: bool) -> tuple[list[Segment], list[Word]]:
        tokenizer = self.processor.tokenizer
        segments: list[Segment] = []
        word_list: list[Word] = []
        for item in raw:
            tokens = [int(t) for t in item["tokens"].tolist()]
            text = tokenizer.decode([t for t in tokens if t < self.text_limit])
            if not text.strip():
                continue
            seg = Segment(start=float(item["start"]), end=float(item["end"]), text=text, tokens=tokens)
            segments.append(seg)
            if want_words and item.get("token_timestamps") is not None:
                word_list += self._words(tokens, [float(t) for t in item["token_timestamps"].tolist()], seg)
        return segments, word_list

    def _words(self, tokens: list[int], times: list[float], seg: Segment) -> list[Word]:
        """Group a segment's text tokens into words (a new word at each leading space) with DTW times."""
        tokenizer = self.processor.tokenizer
        pieces = tokenizer.convert_ids_to_tokens(tokens)
        groups: list[list[int]] = []
        joined = False
        for i, (tok, piece) in enumerate(zip(tokens, pieces, strict=True)):
            if tok >= self.text_limit:
                joined = False
                continue
            if groups and joined and not str(piece).startswith(("Ġ", " ")):
                groups[-1].append(i)
            else:
                groups.append([i])
            joined = True
        result: list[Word] = []
        for group in groups:
            word = tokenizer.decode([tokens[i] for i in group]).strip()
            if not word:
                continue
            start = times[group[0]] if group[0] < len(times) else seg.start
            end = times[group[-1] + 1] if group[-1] + 1 < len(times) else seg.end
            start = min(max(start, seg.start), seg.end)
            result.append(Word(word=word, start=start, end=min(max(end, start), seg.end)))
        return result

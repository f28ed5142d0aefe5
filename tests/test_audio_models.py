"""The speech model classes directly: sub-kind detection, prompts, long-form safety, English-only models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.contract import LoadContext
from core.errors import InvalidRequest, UnsupportedModelType
from core.resolve import ModelSpec
from models.audio.loader import detect_kind, load


def _load(path: Path) -> Any:
    return load(ModelSpec(requested=str(path), key=str(path), category="audio", path=path), LoadContext())


@pytest.fixture(scope="module")
def whisper(tiny_whisper_path: Path) -> Any:
    return _load(tiny_whisper_path)


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_sub_kind_comes_from_the_config() -> None:
    assert detect_kind({"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"]}) == "whisper"
    assert detect_kind({"model_type": "whisper"}) == "whisper"
    assert detect_kind({"model_type": "whisper", "architectures": ["WhisperForAudioClassification"]}) is None
    assert detect_kind({"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"]}) == "ctc"
    assert detect_kind({"model_type": "hubert", "architectures": ["HubertForCTC"]}) == "ctc"
    assert detect_kind({"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForSequenceClassification"]}) is None


def test_gguf_and_unknown_models_are_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelType):
        load(ModelSpec(requested="x", key="x", category="audio", path=tmp_path, gguf_file="x.gguf"), LoadContext())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(UnsupportedModelType):
        _load(tmp_path)


def test_prompt_reaches_generate_after_startofprev(whisper: Any) -> None:
    seen: dict[str, Any] = {}
    real = whisper.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real(*args, **kwargs)

    whisper.model.generate = spy
    try:
        whisper.transcribe(tone(2.0), prompt="Names: Ada, Bob.")
    finally:
        del whisper.model.generate
    tokenizer = whisper.processor.tokenizer
    ids = seen["prompt_ids"].tolist()
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|startofprev|>")
    assert tokenizer.decode(ids[1:]) == " Names: Ada, Bob."
    assert seen["task"] == "transcribe" and seen["language"] == "de"  # detected, then passed explicitly


def test_long_prompts_keep_their_last_tokens(whisper: Any) -> None:
    ids = whisper._prompt_ids("x " * 500).tolist()
    assert len(ids) == 1 + whisper.max_prompt_tokens


def test_translation_asks_for_translate_with_the_detected_source(whisper: Any) -> None:
    seen: dict[str, Any] = {}
    real = whisper.model.generate
    whisper.model.generate = lambda *a, **kw: (seen.update(kw), real(*a, **kw))[1]
    try:
        result = whisper.transcribe(tone(2.0), task="translate")
    finally:
        del whisper.model.generate
    assert seen["task"] == "translate" and seen["language"] == "de"
    assert result.text == "hello world" and result.language == "english"


def test_language_names_and_regional_codes_are_accepted(whisper: Any) -> None:
    assert whisper.language_code("German") == "de"
    assert whisper.language_code("en-US") == "en"
    with pytest.raises(InvalidRequest) as info:
        whisper.language_code("xx")
    assert info.value.param == "language"


def test_stalled_long_form_falls_back_to_fixed_windows(whisper: Any) -> None:
    real = whisper.model.generate

    def stalling(*args: Any, **kwargs: Any) -> Any:
        monitor = kwargs.get("monitor_progress")
        if monitor is not None:  # long-form: pretend the window never moves forward
            import torch

            for _ in range(5):
                monitor(torch.tensor([[0, 7500]]))
        return real(*args, **kwargs)

    whisper.model.generate = stalling
    try:
        result = whisper.transcribe(tone(75.0), timestamps=True)
    finally:
        del whisper.model.generate
    assert [s.start for s in result.segments] == [0.0, 30.0, 60.0]
    assert all(s.start <= s.end <= 75.0 for s in result.segments)
    assert result.text == "hallo welt hallo welt hallo welt"


def test_english_only_whisper_transcribes_but_cannot_translate(tiny_whisper_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "whisper-en"
    shutil.copytree(tiny_whisper_path, folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    gen["is_multilingual"] = False
    (folder / "generation_config.json").write_text(json.dumps(gen))
    model = _load(folder)
    assert model.capabilities == {"transcribe"}
    result = model.transcribe(tone(2.0), language="en")
    assert result.language == "english" and isinstance(result.text, str)
    with pytest.raises(InvalidRequest) as info:
        model.transcribe(tone(2.0), language="de")
    assert info.value.param == "language"

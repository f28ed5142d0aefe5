"""Text out of tokens: incremental decoding (multi-byte characters never split), stop strings across token
boundaries, and the bytes of single tokens for logprobs."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Turns a growing list of token ids into text pieces, holding back incomplete UTF-8 sequences.

    The surrounding-context trick (decode a window that starts a few tokens back, emit only what is new)
    keeps tokenizers that strip or add leading spaces (SentencePiece) correct.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        """Add one token; return the new complete text (maybe empty)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end; the bytes of an incomplete last character are dropped."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):].rstrip(REPLACEMENT) if len(after) > len(before) else ""


class StopMatcher:
    """Finds stop strings in streamed text; holds back any tail that could still begin a stop string."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer = self.buffer[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.buffer)), hold, -1):
                if self.buffer.endswith(stop[:n]):
                    hold = n
                    break
        cut = len(self.buffer) - hold
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes-to-unicode table (byte-level BPE vocabularies)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenText:
    """The text and raw bytes of single tokens, for logprobs (cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}
        vocab_sample = tokenizer.convert_ids_to_tokens(list(range(min(300, len(tokenizer)))))
        self.byte_level = sum(1 for t in vocab_sample if t and t.startswith("Ġ")) > 0

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is not None:
            return hit
        piece = self.tokenizer.convert_ids_to_tokens(token_id) or ""
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        raw: bytes | None = None
        decoder = _byte_decoder()
        if m := _BYTE_PIECE.match(piece):
            raw = bytes([int(m.group(1), 16)])
        elif self.byte_level and piece and all(ch in decoder for ch in piece):
            raw = bytes(decoder[ch] for ch in piece)
        elif piece.startswith("▁"):
            raw = (" " + piece[1:].replace("▁", " ")).encode()
        if raw is None:
            raw = text.encode()
        if REPLACEMENT in text:
            text = raw.decode("utf-8", errors="replace") if raw else text
        self._cache[token_id] = (text, list(raw))
        return text, list(raw)

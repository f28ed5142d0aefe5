"""Splitting a long input into pieces a speech model speaks one at a time.

The input is cut at sentence ends (`.`, `!`, `?`, `…` followed by white space; `。`, `！`, `？`; line
breaks). A sentence longer than the model's piece limit is cut again at clause punctuation (`,` `;` `:` and
dashes), then between words, then anywhere; a piece shorter than `MIN_PIECE_CHARS` (an abbreviation cut
off, "Dr.", or a one-word exclamation) is joined to the next one so every piece is a natural unit to speak.
"""

from __future__ import annotations

import re

MIN_PIECE_CHARS = 12
SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s)|[。！？]+[」』”’)]*|\n+")
CLAUSE_END = re.compile(r"[,;:，；：、]+(?=\s)|\s+[—–-]+\s+")
SPACE = re.compile(r"\s+")
WIDE_PUNCTUATION = "。！？」』”’)，；：、"  # scripts written without spaces: pieces are glued without one


def _glue(a: str, b: str) -> str:
    return a + b if a[-1] in WIDE_PUNCTUATION else f"{a} {b}"


def _cut(text: str, pattern: re.Pattern[str]) -> list[str]:
    """`text` cut after each match of `pattern`, stripped, empty parts dropped."""
    parts: list[str] = []
    start = 0
    for m in pattern.finditer(text):
        parts.append(text[start:m.end()])
        start = m.end()
    parts.append(text[start:])
    return [p for p in (SPACE.sub(" ", part).strip() for part in parts) if p]


def _pack(parts: list[str], limit: int) -> list[str]:
    """Consecutive parts joined into runs of at most `limit` characters."""
    out: list[str] = []
    for part in parts:
        if out and len(_glue(out[-1], part)) <= limit:
            out[-1] = _glue(out[-1], part)
        else:
            out.append(part)
    return out


def _shorten(sentence: str, limit: int) -> list[str]:
    """A sentence cut into pieces of at most `limit` characters, at the gentlest boundary that suffices."""
    if len(sentence) <= limit:
        return [sentence]
    pieces: list[str] = []
    for clause in _pack(_cut(sentence, CLAUSE_END), limit):
        if len(clause) <= limit:
            pieces.append(clause)
            continue
        for word_run in _pack(clause.split(" "), limit):
            pieces += [word_run[i:i + limit] for i in range(0, len(word_run), limit)]
    return pieces


def split_text(text: str, limit: int) -> list[str]:
    """The pieces of `text` to speak in order: sentences, each at most `limit` characters, with very short
    ones joined to their neighbour (when the two fit in `limit`)."""
    pieces = [p for sentence in _cut(text, SENTENCE_END) for p in _shorten(sentence, limit)]
    out: list[str] = []
    for piece in pieces:
        if out and len(out[-1]) < MIN_PIECE_CHARS and len(_glue(out[-1], piece)) <= limit:
            out[-1] = _glue(out[-1], piece)
        else:
            out.append(piece)
    if len(out) > 1 and len(out[-1]) < MIN_PIECE_CHARS and len(_glue(out[-2], out[-1])) <= limit:
        out[-2:] = [_glue(out[-2], out[-1])]
    return out

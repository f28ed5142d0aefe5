"""What every text encoder shares: the tokenizer, the maximum length, the too-long policy and padding.

Items are tokenized on the model's worker thread, inside the batched call, so the event loop never
tokenizes and the tokenizer is only ever used by one thread.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.contract import BaseModel, LoadContext, module_bytes
from core.errors import InvalidRequest
from models.encoder.trace import build_traced, first_output

logger = logging.getLogger("universal_runtime.encoder")

UNBOUNDED = 1_000_000  # tokenizers report a huge model_max_length when they do not know it
TRACE_AFTER_ITEMS = 32  # inputs a model serves before it tries the TorchScript fast path
# Batches the TorchScript fast path is traced from (rows of different lengths, so the padded path is traced)
# and checked on (one unpadded row; rows longer than any in the example).
TRACE_TEXTS = ("A short one.", "A rather longer example sentence, so that the other row of the batch is padded.")
CHECK_TEXTS = (("Hi",), ("First of three.", "The second text of this check batch is longer than every text of the "
                         "example batch, so the trace must generalise beyond the length it was taken at.", "Third."))
ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet", "xlm-roberta-xl", "bart",
                "ibert", "data2vec-text", "markuplm"}


@dataclass(frozen=True)
class TextItem:
    """One input of a request: a text, a list of token ids, or a (text, pair) couple for cross-encoders.

    `index` and `param` name the input in errors (`input.3`, `documents.0`).
    """

    index: int
    text: str | None = None
    ids: tuple[int, ...] | None = None
    pair: str | None = None
    truncate: bool = False
    param: str = "input"
    prompt: str | None = None

    @property
    def size(self) -> int:
        """A cheap length estimate used to sort a batch (tokens for ids, characters for text)."""
        if self.ids is not None:
            return len(self.ids)
        return len(self.prompt or "") + len(self.text or "") + len(self.pair or "")


def read_json(path: Path) -> Any:
    """Parsed JSON file, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def max_tokens(folder: Path, config: Any, tokenizer: Any, configured: int | None = None) -> int:
    """The longest input the model takes: the configured (sentence-transformers) limit, else the
    tokenizer's, capped by the position embeddings."""
    limits: list[int] = []
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(positions, int) and positions > 0:
        model_type = getattr(config, "model_type", "")
        limits.append(positions - 2 if model_type in ROBERTA_LIKE and positions > 2 else positions)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < UNBOUNDED:
        limits.append(tok_max)
    if configured:
        limits = [min([configured, *limits])]
    return min(limits) if limits else 512


class TextEncoderBase(BaseModel):
    """A loaded transformers model with its tokenizer; subclasses add the forward pass they serve.

    Once it has served `TRACE_AFTER_ITEMS` inputs the model tries, once, to trace its forward pass with
    TorchScript (models/encoder/trace.py) unless the `trace` option is off, so a model loaded for a request
    or two never pays for the attempt; `describe()["forward"]` says which forward serves ("torchscript",
    or "eager" with the reason).
    """

    category = "encoder"
    kind = "encoder"

    def __init__(self, model_id: str, ctx: LoadContext, folder: Path, model: Any, tokenizer: Any,
                 max_length: int, lowercase: bool = False) -> None:
        super().__init__(model_id, ctx)
        self.folder = folder
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.lowercase = lowercase
        config = model.config
        vocab = getattr(config, "vocab_size", None) or len(tokenizer)
        self.vocab_size = int(vocab)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(config, "pad_token_id", None)
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.left_padding = getattr(tokenizer, "padding_side", "right") == "left"
        params = inspect.signature(model.forward).parameters
        self.takes_token_types = "token_type_ids" in params
        self.takes_positions = "position_ids" in params and self.left_padding
        self._traced: Any = None
        self._trace_pending = bool(ctx.options.get("trace", True))
        self._served = 0
        self._closing = False
        self.forward_kind = "eager" if self._trace_pending else "eager (trace option off)"

    # ----- the forward pass ----------------------------------------------------------------------
    def first_output(self, inputs: dict[str, Any]) -> Any:
        """The model's first output (hidden states or logits) for padded inputs, through the trace if any."""
        traced = self._traced
        return traced(inputs) if traced is not None else first_output(self.model(**inputs))

    def after_batch(self, items: int) -> None:
        """Count the inputs served; once there are enough, queue the one trace attempt on this model's worker
        thread, behind the batch now finishing."""
        self._served += items
        if not self._trace_pending or self._served < TRACE_AFTER_ITEMS:
            return
        self._trace_pending = False
        try:
            self.executor.submit(self._trace)
        except RuntimeError:  # the model is being closed
            pass

    def _trace(self) -> None:
        model = self.model
        if model is None or self._closing:
            return

        def batch(texts: tuple[str, ...]) -> dict[str, Any]:
            return self.pad(self.encode_items([TextItem(index=0, text=t, truncate=True) for t in texts]))  # type: ignore[arg-type]

        try:
            example = batch(TRACE_TEXTS)
            checks = [batch(t) for t in CHECK_TEXTS]
        except Exception as exc:  # noqa: BLE001 - e.g. the model was closed meanwhile; eager stays
            logger.debug("%s: no trace attempt (%s)", self.model_id, exc)
            return
        traced, how = build_traced(model, tuple(example), example, checks)
        if traced is None:
            logger.info("%s keeps the eager forward: %s", self.model_id, how)
            self.forward_kind = f"eager ({how})"
        else:
            self._traced, self.forward_kind = traced, how

    # ----- tokenization and the too-long policy --------------------------------------------------
    def encode_items(self, items: list[TextItem]) -> list[dict[str, list[int]] | Exception]:
        """Token ids (and token types) per item, or the 400 error of an item that is too long or invalid."""
        out: list[dict[str, list[int]] | Exception | None] = [None] * len(items)
        for i, it in enumerate(items):
            if it.ids is not None:
                out[i] = self._check_ids(it)
        for pairs in (False, True):  # singles and (text, pair) couples are tokenized apart
            texts = [i for i, it in enumerate(items) if it.ids is None and (it.pair is not None) == pairs]
            if not texts:
                continue
            encoded = self._tokenize([items[i] for i in texts], truncate=False)
            redo: list[int] = []
            for i, enc in zip(texts, encoded, strict=True):
                n = len(enc["input_ids"])
                if n == 0:  # an empty text, and a tokenizer that adds no special tokens: nothing to run
                    out[i] = InvalidRequest(f"Input {items[i].index} is empty: this model sees no tokens in it.",
                                            param=f"{items[i].param}.{items[i].index}")
                elif n <= self.max_length:
                    out[i] = enc
                elif items[i].truncate:
                    redo.append(i)
                else:
                    out[i] = self.too_long(items[i], n)
            if redo:
                for i, enc in zip(redo, self._tokenize([items[i] for i in redo], truncate=True), strict=True):
                    out[i] = enc
        return [o if o is not None else RuntimeError("item was not encoded") for o in out]

    def _tokenize(self, items: list[TextItem], truncate: bool) -> list[dict[str, list[int]]]:
        firsts = [self._prepare((it.prompt or "") + (it.text or "")) for it in items]
        kwargs: dict[str, Any] = {"add_special_tokens": True, "verbose": False}
        if truncate:
            kwargs.update(truncation="longest_first", max_length=self.max_length)
        else:
            kwargs.update(truncation=False)
        if items and items[0].pair is not None:
            enc = self.tokenizer(firsts, [self._prepare(it.pair or "") for it in items], **kwargs)
        else:
            enc = self.tokenizer(firsts, **kwargs)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        return [{k: list(enc[k][j]) for k in keys} for j in range(len(items))]

    def _prepare(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def _check_ids(self, item: TextItem) -> dict[str, list[int]] | Exception:
        ids = list(item.ids or ())
        bad = next((t for t in ids if t < 0 or t >= self.vocab_size), None)
        if bad is not None:
            return InvalidRequest(f"Input {item.index} has token id {bad}, outside this model's vocabulary "
                                  f"(0..{self.vocab_size - 1}).", param=f"{item.param}.{item.index}")
        if len(ids) > self.max_length:
            if not item.truncate:
                return self.too_long(item, len(ids))
            ids = ids[:self.max_length]
        return {"input_ids": ids}

    def too_long(self, item: TextItem, n: int) -> InvalidRequest:
        """The 400 for an input over the model's maximum length."""
        return InvalidRequest(
            f"Input {item.index} is {n} tokens long; this model takes at most {self.max_length} tokens. "
            "Shorten it, or send \"truncate\": true to cut it to the maximum.", param=f"{item.param}.{item.index}")

    # ----- padding and forward inputs ------------------------------------------------------------
    def pad(self, encoded: list[dict[str, list[int]]]) -> dict[str, Any]:
        """Tensors for a forward pass: ids padded on the tokenizer's side, attention mask, token types."""
        import torch

        width = max(len(e["input_ids"]) for e in encoded)

        def padded(row: list[int], fill: int) -> list[int]:
            gap = [fill] * (width - len(row))
            return gap + row if self.left_padding else row + gap

        # Rows are padded as Python lists and turned into tensors in one call each: one small tensor per row
        # would hold the GIL (which the event loop needs) for far longer.
        ids = torch.tensor([padded(list(e["input_ids"]), self.pad_id) for e in encoded], dtype=torch.long)
        mask = torch.tensor([padded([1] * len(e["input_ids"]), 0) for e in encoded], dtype=torch.long)
        types = torch.tensor([padded(list(e.get("token_type_ids") or [0] * len(e["input_ids"])), 0)
                              for e in encoded], dtype=torch.long) if self.takes_token_types else None
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            inputs["token_type_ids"] = types
        if self.takes_positions:
            inputs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
        device = self.ctx.device
        return {k: v.to(device) for k, v in inputs.items()} if device != "cpu" else inputs

    # ----- BaseModel -----------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        return module_bytes(self.model)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_tokens": self.max_length, "capabilities": sorted(self.capabilities),
                "forward": self.forward_kind}

    def close(self) -> None:
        """Free the model. A traced forward is unbound from the weights only once nothing runs on the worker
        thread any more (a batch of a cancelled request, a trace attempt): its tensors are emptied in place."""
        self._closing = True
        executor = self._executor
        if executor is not None and not self.on_worker_thread():
            try:
                executor.submit(lambda: None).result(timeout=120)
            except Exception:  # noqa: BLE001 - shut down already, or stuck: nothing more to wait for
                pass
        traced, self._traced = self._traced, None
        if traced is not None:
            traced.release()
        self.model = None
        self.tokenizer = None
        super().close()

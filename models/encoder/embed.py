"""Text embedding models: sentence-transformers pipelines and plain transformers encoders."""

from __future__ import annotations

from typing import Any

from core.contract import module_bytes
from core.errors import InvalidRequest
from models.encoder.st import StPipeline, load_dense, pool
from models.encoder.text import TextEncoderBase, TextItem

EmbedResult = tuple[Any, int]  # (float32 numpy vector, tokens the model saw)


class EmbeddingModel(TextEncoderBase):
    """Embeds texts or token ids: Transformer -> pooling -> (Dense) -> (Normalize).

    A sentence-transformers folder brings its own pooling, Dense layers, normalisation and prompts; a plain
    transformers encoder gets mean pooling + L2 normalisation.
    """

    capabilities = frozenset({"embeddings"})

    def __init__(self, *args: Any, pipeline: StPipeline | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = pipeline
        self.kind = "sentence-transformers" if pipeline else "transformers"
        self.pooling: tuple[str, ...] = pipeline.pooling if pipeline else ("mean",)
        self.include_prompt = pipeline.include_prompt if pipeline else True
        self.normalize = pipeline.normalize if pipeline else True
        self.prompts: dict[str, str] = dict(pipeline.prompts) if pipeline else {}
        self.default_prompt_name = pipeline.default_prompt_name if pipeline else None
        self.post: list[Any] = []
        if pipeline:
            dtype = self.ctx.torch_dtype()
            for kind, path in pipeline.post:
                self.post.append(load_dense(path, dtype, self.ctx.device) if kind == "dense" else "normalize")
        elif self.normalize:
            self.post.append("normalize")
        self._prompt_lengths: dict[str, int] = {}
        warm = self.encode_items([TextItem(index=0, text="warm up", truncate=True)])[0]
        self.dimensions = int(self._forward([warm], [0]).shape[-1])  # type: ignore[list-item]

    # ----- prompts (sentence-transformers `prompts`, chosen with the request's `prompt_name`) -------
    def prompt_for(self, name: str | None) -> str | None:
        """The prompt text for `prompt_name` (or the model's default prompt); unknown names are a 400."""
        if name is None:
            return self.prompts.get(self.default_prompt_name) if self.default_prompt_name else None
        if name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise InvalidRequest(f"Unknown prompt_name '{name}' for this model (its prompts: {known}).",
                                 param="prompt_name")
        return self.prompts[name]

    def _prompt_length(self, prompt: str | None) -> int:
        """Tokens of the prompt itself, without a trailing special token (sentence-transformers' rule)."""
        if not prompt or self.include_prompt:
            return 0
        if prompt not in self._prompt_lengths:
            ids = self.tokenizer(self._prepare(prompt), add_special_tokens=True)["input_ids"]
            n = len(ids)
            if ids and ids[-1] in set(self.tokenizer.all_special_ids):
                n -= 1
            self._prompt_lengths[prompt] = n
        return self._prompt_lengths[prompt]

    # ----- the batched call ----------------------------------------------------------------------
    def embed_batch(self, items: list[TextItem]) -> list[EmbedResult | Exception]:
        """One forward pass for a batch: a (vector, token count) per item, or that item's 400 error."""
        encoded = self.encode_items(items)
        good = [i for i, e in enumerate(encoded) if not isinstance(e, Exception)]
        results: list[Any] = list(encoded)
        if good:
            vectors = self._forward([encoded[i] for i in good],  # type: ignore[misc]
                                    [self._prompt_length(items[i].prompt) for i in good])
            for row, i in enumerate(good):
                results[i] = (vectors[row], len(encoded[i]["input_ids"]))  # type: ignore[index]
            self.after_batch(len(good))
        return results

    def _forward(self, encoded: list[dict[str, list[int]]], prompt_lengths: list[int]) -> Any:
        import torch

        inputs = self.pad(encoded)
        with torch.inference_mode():
            tokens = self.first_output(inputs)
            vectors = pool(tokens.float(), inputs["attention_mask"], self.pooling, prompt_lengths)
            for module in self.post:
                if module == "normalize":
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                else:
                    vectors = module(vectors.to(next(module.parameters()).dtype)).float()
        return vectors.cpu().numpy()

    def memory_bytes(self) -> int:
        return module_bytes(self.model, *(m for m in self.post if m != "normalize"))

    def close(self) -> None:
        self.post = []
        super().close()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(pooling=self.pooling[0] if len(self.pooling) == 1 else list(self.pooling),
                    normalize=self.normalize, dimensions=self.dimensions,
                    dense_layers=sum(1 for m in self.post if m != "normalize"))
        if self.prompts:
            info.update(prompts=sorted(self.prompts), default_prompt_name=self.default_prompt_name)
        if not self.include_prompt:
            info["include_prompt"] = False
        return info

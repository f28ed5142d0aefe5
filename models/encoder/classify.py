"""Sequence classifiers and cross-encoders: text classification and (query, document) reranking."""

from __future__ import annotations

from typing import Any

from models.encoder.text import TextEncoderBase, TextItem

ScoreResult = tuple[Any, int]  # (float32 numpy scores, tokens the model saw)


class ClassifierModel(TextEncoderBase):
    """A `*ForSequenceClassification` model. Classifies with softmax over `id2label` (sigmoid for
    multi-label models and single-logit ones); a single-logit model (or a sentence-transformers
    CrossEncoder with one output) also reranks, scoring each (query, document) pair with sigmoid(logit).
    """

    def __init__(self, *args: Any, cross_encoder: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.model.config
        self.num_labels = int(getattr(config, "num_labels", 0) or len(getattr(config, "id2label", {}) or {}))
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        self.labels = [id2label.get(i, f"LABEL_{i}") for i in range(self.num_labels)]
        self.multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
        self.cross_encoder = cross_encoder
        self.kind = "cross-encoder" if cross_encoder else "classifier"
        caps = {"classify"} | ({"rerank"} if self.num_labels == 1 else set())
        self.capabilities = frozenset(caps)  # type: ignore[misc]

    @property
    def activation(self) -> str:
        return "sigmoid" if self.multi_label or self.num_labels == 1 else "softmax"

    def classify_batch(self, items: list[TextItem]) -> list[ScoreResult | Exception]:
        """Label probabilities (in `labels` order) per item, or that item's 400 error."""
        return self._scored(items, self.activation)

    def rerank_batch(self, items: list[TextItem]) -> list[ScoreResult | Exception]:
        """sigmoid(logit) of each (query, document) pair, or that pair's 400 error."""
        return self._scored(items, "sigmoid")

    def _scored(self, items: list[TextItem], activation: str) -> list[Any]:
        import torch

        encoded = self.encode_items(items)
        good = [i for i, e in enumerate(encoded) if not isinstance(e, Exception)]
        results: list[Any] = list(encoded)
        if not good:
            return results
        inputs = self.pad([encoded[i] for i in good])  # type: ignore[misc]
        with torch.inference_mode():
            logits = self.first_output(inputs).float()
            scores = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=-1)
        scores_np = scores.cpu().numpy()
        for row, i in enumerate(good):
            results[i] = (scores_np[row], len(encoded[i]["input_ids"]))  # type: ignore[index]
        self.after_batch(len(good))
        return results

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(labels=self.labels, activation=self.activation,
                    problem_type="multi_label_classification" if self.multi_label else "single_label_classification")
        return info

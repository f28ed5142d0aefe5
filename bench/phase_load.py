"""Load: thousands of mixed requests (chat, embeddings, vision classification) from 32 concurrent clients
against a real server process on loopback, with tiny models built here (random weights, fixed seeds).

Pass/fail facts: zero failed requests (429 `server_overloaded` with Retry-After is the only documented
refusal and is counted apart), and resident memory flat after warm-up.
Rows:
- throughput with 32 concurrent clients vs one client sending the same mix (ratio, higher is better): what
  concurrency buys through continuous batching (chat) and micro-batching (embeddings, vision);
- server RSS after the load vs after warm-up (target <= 1.10).
`tests/test_load.py` runs a smaller version of the same driver in the test suite.
"""

from __future__ import annotations

import asyncio
import base64
import io
import statistics
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Harness, Stats

PHASE = "load"
CLIENTS = 32
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TEXTS = ["the cat sat on the mat", "hello world", "what is the capital of france", "a nice day for a walk",
         "load test sentence number seven", "embeddings of short texts"]


# ----- tiny models ----------------------------------------------------------------------------------------
def build_tiny_chat(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer and a ChatML template (random weights)."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"])
    tok.train_from_iterator(TEXTS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>")
    fast.chat_template = CHATML
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id, bos_token_id=None)
        LlamaForCausalLM(config).eval().save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def build_tiny_vit(folder: Path, seed: int = 0) -> Path:
    """A 2-layer ViT image classifier on 32x32 inputs with five named labels (random weights)."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    labels = ["cat", "dog", "car", "tree", "boat"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, num_labels=len(labels), id2label=dict(enumerate(labels)),
                           label2id={v: i for i, v in enumerate(labels)})
        ViTForImageClassification(config).eval().save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def png_b64(seed: int) -> str:
    """A small PNG, different per seed."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (seed * 37 % 256, seed * 91 % 256, 120)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ----- the driver ----------------------------------------------------------------------------------------------
def mixed_requests(total: int, chat: str, embed: str, vision: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(category, path, body) for `total` requests: 2 chat : 2 embeddings : 1 vision, varied inputs."""
    images = [png_b64(i) for i in range(8)]
    plan = []
    for i in range(total):
        kind = ("chat", "embeddings", "chat", "embeddings", "vision")[i % 5]
        text = TEXTS[i % len(TEXTS)]
        if kind == "chat":
            plan.append((kind, "/v1/chat/completions", {"model": chat, "max_tokens": 8, "temperature": 0.7,
                                                        "seed": i, "messages": [{"role": "user", "content": text}]}))
        elif kind == "embeddings":
            plan.append((kind, "/v1/embeddings", {"model": embed, "input": [text, TEXTS[(i + 1) % len(TEXTS)]]}))
        else:
            plan.append((kind, "/v1/vision/classify", {"model": vision, "images": [images[i % len(images)]],
                                                       "top_k": 2}))
    return plan


@dataclass
class LoadReport:
    """What one load run saw."""

    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    missing_retry_after: int = 0

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def throughput(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0

    def p(self, kind: str, pct: float) -> float:
        values = sorted(self.latencies.get(kind, []))
        return values[min(len(values) - 1, int(len(values) * pct / 100))] if values else 0.0

    def summary(self) -> str:
        parts = [f"{self.total} requests in {self.seconds:.1f} s ({self.throughput:.0f}/s)",
                 "statuses " + ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))]
        for kind in sorted(self.latencies):
            parts.append(f"{kind} p50 {self.p(kind, 50) * 1000:.0f} ms / p95 {self.p(kind, 95) * 1000:.0f} ms")
        return "; ".join(parts)


async def _drive(url: str, plan: list[tuple[str, str, dict[str, Any]]], clients: int, report: LoadReport,
                 headers: dict[str, str] | None = None) -> None:
    queue = iter(enumerate(plan))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, headers=headers) as http:

        async def client() -> None:
            for _, (kind, path, body) in queue:
                started = time.perf_counter()
                try:
                    r = await http.post(path, json=body)
                except httpx.HTTPError as exc:
                    report.statuses["transport-error"] += 1
                    report.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                report.statuses[f"{kind} {r.status_code}"] += 1
                if r.status_code == 200:
                    report.latencies[kind].append(time.perf_counter() - started)
                elif r.status_code == 429:
                    report.missing_retry_after += "retry-after" not in r.headers
                else:
                    report.failures.append(f"{kind} {r.status_code}: {r.text[:200]}")

        await asyncio.gather(*(client() for _ in range(clients)))


def drive(url: str, plan: list[tuple[str, str, dict[str, Any]]], clients: int = CLIENTS,
          headers: dict[str, str] | None = None) -> LoadReport:
    """Send every request of `plan` from `clients` concurrent keep-alive connections; returns what came back.
    Failures are anything but 200, or 429 with Retry-After."""
    report = LoadReport()
    started = time.perf_counter()
    asyncio.run(_drive(url, plan, clients, report, headers))
    report.seconds = time.perf_counter() - started
    return report


class RssSampler:
    """Samples a server's RSS on a thread (peak and last) while a load runs."""

    def __init__(self, srv: Any, interval: float = 0.25) -> None:
        self.srv = srv
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.srv.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def settle_rss(srv: Any, seconds: float = 1.0) -> int:
    """RSS once the server has been idle a moment (median of a few samples)."""
    samples = []
    for _ in range(5):
        time.sleep(seconds / 5)
        samples.append(srv.rss())
    return int(statistics.median(samples))


def run(h: Harness) -> None:
    from bench.tiny import build_small_encoder

    total = 1000 if h.quick else 2000
    chat = build_tiny_chat(h.tmp / "load-chat")
    embed = build_small_encoder(h.tmp / "load-bert", hidden=64, layers=2)
    vision = build_tiny_vit(h.tmp / "load-vit")
    with h.server() as srv:
        for route in ("/v1/chat/completions", "/v1/embeddings", "/v1/vision/classify"):
            if not srv.has_route(route):
                h.skip("mixed load", f"POST {route} is not implemented yet")
                return
        plan = mixed_requests(total, str(chat), str(embed), str(vision))
        warm = drive(srv.url, plan[:300])  # loads the three models, fills caches and allocator pools
        rss_warm = settle_rss(srv)
        sequential = drive(srv.url, plan[:150], clients=1)
        with RssSampler(srv) as sampler:
            report = drive(srv.url, plan)
        rss_after = settle_rss(srv)
    failures = warm.failures + sequential.failures + report.failures
    h.log(report.summary())
    if failures or report.missing_retry_after:
        h.fail(f"{len(failures)} failed requests, {report.missing_retry_after} 429s without Retry-After; "
               f"first: {failures[:3]}", metric=f"{total} mixed requests from {CLIENTS} clients")
    refused = sum(v for k, v in report.statuses.items() if k.endswith(" 429"))
    h.result(f"throughput, {total} mixed requests (chat/embeddings/vision): {CLIENTS} clients vs 1",
             Stats.of([report.throughput]), Stats.of([sequential.throughput]), unit="req/s",
             higher_is_better=True, target=">=1.0",
             note=f"{report.summary()}; 1 client: {sequential.throughput:.0f}/s; {refused} documented 429s; "
                  f"{len(failures)} failures")
    peak = max(sampler.samples or [rss_after])
    h.result(f"server RSS after {total} mixed requests vs after warm-up", Stats.of([rss_after]),
             Stats.of([rss_warm]), unit="B", target="<=1.10",
             note=f"warm {rss_warm / 2**20:.0f} MiB, after {rss_after / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB")

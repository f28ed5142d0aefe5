"""CUDA benchmarks at real sizes with random weights: `python bench/gpu.py [--phase NAME ...] [--dtype bf16]`.

Phases (each ours through the server vs the same work directly in this process, interleaved):
chat (Qwen2.5-0.5B-sized: time to first token, tokens/s), embeddings (bge-base-sized: embeddings/s),
images (SD-1.5-sized UNet, 512x512: images/s), audio (Whisper-small-sized, 30 s of audio: real-time
factor), memory (GPU memory after evict/reload cycles and after unloading). Models are built from configs
(no downloads); see bench/gpu_models.py. Writes gpu_results.json / gpu_results.md (default: bench/).

Without CUDA it prints why and exits 0. `--tiny --device cpu` runs the same code at toy sizes on the CPU
(a smoke test of this script, not a benchmark).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PHASES = ("chat", "embeddings", "images", "audio", "memory")


class Ctx:
    """What every GPU phase needs: the harness, device, dtype and sizes."""

    def __init__(self, h: Any, device: str, dtype: str, tiny: bool) -> None:
        import torch

        self.h = h
        self.device = device
        self.dtype_name = dtype
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        self.tiny = tiny
        self.env = {"UNIVERSAL_RUNTIME_DEVICE": device, "UNIVERSAL_RUNTIME_DTYPE": dtype}

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(self, fn: Any) -> float:
        """Seconds for fn(), with the device synchronised before and after."""
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start


def first_content(frame: dict[str, Any]) -> bool:
    """Whether a chat stream frame carries generated text."""
    return any((choice.get("delta") or {}).get("content") for choice in frame.get("choices") or [])


def phase_chat(c: Ctx) -> None:
    """Time to first token (streamed) and decode tokens/s, vs HF generate on the same weights."""
    import torch

    from bench.gpu_models import build_chat, words

    h = c.h
    folder = h.tmp / "chat"
    model, tok = build_chat(folder, c.tiny, c.device, c.dtype)
    prompt_len, new = (16, 8) if c.tiny else (512, 128)
    prompt = words(prompt_len)
    messages = [{"role": "user", "content": prompt}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True).to(c.device)

    def generate(n: int) -> int:
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return int(out.shape[1] - inputs["input_ids"].shape[1])

    body = {"model": str(folder), "messages": messages, "temperature": 0}
    with h.server(env=c.env) as srv:
        def ttft() -> float:
            start = time.perf_counter()
            with srv.client.stream("POST", "/v1/chat/completions",
                                   json={**body, "max_tokens": new, "stream": True}) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: {") and first_content(json.loads(line[6:])):
                        return time.perf_counter() - start
            raise RuntimeError("the stream produced no content")

        def rate() -> float:
            start = time.perf_counter()
            usage = srv.post("/v1/chat/completions", json={**body, "max_tokens": new}).json()["usage"]
            return usage["completion_tokens"] / (time.perf_counter() - start)

        o, b = h.interleave(ttft, lambda: c.timed(lambda: generate(1)))
        h.result(f"time to first token ({prompt_len}-token prompt)", o, b, target="<=1.2")
        o, b = h.interleave(rate, lambda: new / c.timed(lambda: generate(new)))
        h.result(f"decode tokens/s ({new} tokens, batch 1)", o, b, unit="tok/s", higher_is_better=True,
                 target=">=0.83", note=f"ours {o.median:.0f} tok/s")


def phase_embeddings(c: Ctx) -> None:
    """Embeddings/s for a batch of 32 long texts, vs a direct forward with mean pooling."""
    from bench.gpu_models import build_embedder
    from bench.tiny import DirectEncoder

    h = c.h
    folder = build_embedder(h.tmp / "embed", c.tiny)
    texts = [" ".join(["benchmark"] + ["word"] * (20 if c.tiny else 120) + [str(i)]) for i in range(32)]
    direct = DirectEncoder(folder, device=c.device, dtype=c.dtype).load()
    with h.server(env=c.env) as srv:
        body = {"model": str(folder), "input": texts}
        o, b = h.interleave(lambda: len(texts) / srv.timed_post("/v1/embeddings", json=body),
                            lambda: len(texts) / c.timed(lambda: direct.embed(texts)))
        h.result("embeddings/s (32 texts x ~128 tokens)", o, b, unit="emb/s", higher_is_better=True,
                 target=">=0.83", note=f"ours {o.median:.0f} embeddings/s")


def phase_images(c: Ctx) -> None:
    """Images/s at 512x512 (20 DDIM steps, CFG), vs calling the same pipeline object directly."""
    import torch

    from bench.gpu_models import build_sd

    h = c.h
    folder = h.tmp / "sd"
    pipe = build_sd(folder, c.tiny, c.device, c.dtype)
    side, steps = (64, 2) if c.tiny else (512, 20)
    prompt = "a photo of a cat"

    def direct() -> float:
        gen = torch.Generator(c.device).manual_seed(0)
        return 1 / c.timed(lambda: pipe(prompt, height=side, width=side, num_inference_steps=steps,
                                        guidance_scale=7.5, generator=gen))

    with h.server(env=c.env) as srv:
        body = {"model": str(folder), "prompt": prompt, "size": f"{side}x{side}", "num_inference_steps": steps,
                "guidance_scale": 7.5, "seed": 0, "response_format": "b64_json"}
        o, b = h.interleave(lambda: 1 / srv.timed_post("/v1/images/generations", json=body), direct,
                            rounds=min(h.rounds, 3))
        h.result(f"images/s ({side}x{side}, {steps} steps)", o, b, unit="img/s", higher_is_better=True,
                 target=">=0.83", note=f"ours {o.median:.2f} images/s (PNG encoding included)")


def phase_audio(c: Ctx) -> None:
    """Real-time factor (seconds of compute per second of audio) for 30 s of audio, vs direct generate."""
    import numpy as np
    import soundfile as sf
    import torch

    from bench.gpu_models import build_whisper

    h = c.h
    folder = h.tmp / "whisper"
    new_tokens = 8 if c.tiny else 64
    model, processor = build_whisper(folder, c.tiny, c.device, c.dtype, new_tokens)
    seconds = 30.0
    t = np.arange(int(16000 * seconds)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size))
    audio = audio.astype(np.float32)
    wav = io.BytesIO()
    sf.write(wav, audio, 16000, format="WAV")

    def direct() -> None:
        feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features.to(c.device, c.dtype)
        with torch.inference_mode():
            model.generate(feats, language="en", task="transcribe", min_new_tokens=new_tokens)

    with h.server(env=c.env) as srv:
        def ours() -> float:
            files = {"file": ("a.wav", wav.getvalue(), "audio/wav")}
            data = {"model": str(folder), "language": "en", "response_format": "json"}
            return srv.timed_post("/v1/audio/transcriptions", files=files, data=data) / seconds

        o, b = h.interleave(ours, lambda: c.timed(direct) / seconds)
        h.result(f"real-time factor ({seconds:.0f} s audio, {new_tokens} tokens)", o, b, unit="RTF",
                 target="<=1.2", note=f"ours {1 / o.median:.0f}x faster than real time")


def phase_memory(c: Ctx) -> None:
    """GPU memory (server's torch allocation via /health) after evict/reload cycles and after unloading."""
    from bench.gpu_models import build_chat, build_embedder
    from bench.harness import Stats

    h = c.h
    chat = h.tmp / "chat"
    if not (chat / "config.json").exists():
        build_chat(chat, c.tiny, "cpu", c.dtype)
    embed = h.tmp / "embed"
    if not (embed / "config.json").exists():
        build_embedder(embed, c.tiny)
    release(c)
    with h.server(env={**c.env, "UNIVERSAL_RUNTIME_MAX_LOADED_MODELS": "1"}) as srv:
        def allocated() -> int:
            return int(srv.get("/health").json()["device"]["memory_allocated"] or 0)

        def load(folder: Path, kind: str) -> None:
            srv.post("/v1/models/load", json={"model": str(folder), "type": kind})

        load(embed, "encoder")
        first = allocated()
        for _ in range(2 if h.quick else 5):
            load(chat, "causal")
            load(embed, "encoder")
        last = allocated()
        srv.post("/v1/models/unload", json={"model": str(embed)})
        empty = allocated()
    h.result("GPU memory with the encoder loaded: after reload cycles vs first load", Stats.of([last]),
             Stats.of([first]), unit="B", target="<=1.10", note="capacity 1, chat and encoder alternating")
    h.result("GPU memory after unloading vs with the encoder loaded", Stats.of([empty]), Stats.of([first]),
             unit="B", target="<=0.05", note=f"{empty / 2**20:.0f} MiB still allocated after unload")


def release(c: Ctx) -> None:
    import gc

    import torch

    gc.collect()
    if c.device.startswith("cuda"):
        torch.cuda.empty_cache()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/gpu.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", action="append", choices=PHASES, default=[], help="run only this phase (repeatable)")
    p.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16", help="weights dtype (default fp16)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --tiny")
    p.add_argument("--rounds", type=int, help="rounds per measurement (default 5, 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="fewer rounds")
    p.add_argument("--tiny", action="store_true", help="toy sizes: a smoke test of this script")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for gpu_results.*")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/gpu.py needs CUDA and none is available here; nothing was run. "
              "Use bench/run.py for the CPU benchmarks (or --tiny --device cpu for a smoke run).")
        return 0
    if args.device == "cpu" and not args.tiny:
        print("bench/gpu.py on the CPU only runs with --tiny (real sizes would take hours).")
        return 2
    from bench.harness import Harness, machine_info
    from bench.report import write_reports
    from bench.run import run_phase

    dtype = "fp32" if args.device == "cpu" else args.dtype
    h = Harness(rounds=args.rounds or (2 if args.quick else 5), quick=args.quick, threads=args.threads)
    h.apply_threads()
    c = Ctx(h, args.device, dtype, args.tiny)
    started = time.perf_counter()
    for name in args.phase or PHASES:
        run_phase(h, name, _PhaseModule(globals()[f"phase_{name}"], c))
    info = machine_info()
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["processor"] = f"{info['processor']}, {info['gpu']}"
    data = {"machine": info, "settings": {"rounds": h.rounds, "quick": args.quick, "threads": args.threads,
                                          "device": args.device, "dtype": dtype, "tiny": args.tiny},
            "total_s": time.perf_counter() - started, "phases": h.phases, "rows": h.rows}
    _, md_path = write_reports(data, args.out, stem="gpu_results")
    print(md_path.read_text())
    return 0


class _PhaseModule:
    """Adapts a phase function to run_phase's `module.run(h)`."""

    def __init__(self, fn: Any, c: Ctx) -> None:
        self.fn, self.c = fn, c

    def run(self, h: Any) -> None:
        try:
            self.fn(self.c)
        finally:
            release(self.c)  # the phase's models are garbage once it returns


if __name__ == "__main__":
    sys.exit(main())

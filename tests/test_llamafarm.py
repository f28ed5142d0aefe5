"""The LlamaFarm server's `provider: universal`, reproduced call for call against a real server on a socket.

Mirrored from the public llama-farm/llamafarm sources:

- `server/services/runtime_service/providers/universal_provider.py` (`UniversalProvider.check_health`):
  `requests.get(<base>/health, timeout=2.0)` reading `device.type` (or `device` itself when it is not an object)
  and `loaded_models`, then `requests.get(<base>/v1/models, timeout=1.0)` reading `data[].id`; no auth header.
  `base` is the provider's base_url (default `http://127.0.0.1:11540/v1`) with `/v1` removed.
- `server/agents/base/clients/openai.py` (`LFAgentClientOpenAI.chat` / `stream_chat`): a fresh
  `AsyncOpenAI(api_key=..., base_url=...)` per call, `chat.completions.create(messages=..., model=<the model id
  from llamafarm.yaml>, tools=<native tools or NOT_GIVEN>, **model_api_parameters, extra_body={per-request
  extra_body, then the project's extra_body (n_ctx, ...)}, stream=...)`; streamed chunks are passed through.
- `server/core/settings.py`: `universal_api_key = "universal"`, the Bearer token sent by default.
- `rag/components/embedders/universal_embedder/universal_embedder.py` (`UniversalEmbedder`): base URL gets `/v1`
  appended, `validate_config` GETs `base_url.replace("/v1", "/health")` and `<base_url>/models` (timeout 5);
  `_call_universal_api` POSTs `<base_url>/embeddings` with `{"model", "input": texts if len(texts) > 1 else
  texts[0]}`, `Content-Type: application/json` and `Authorization: Bearer universal`, in batches of 32, and
  reads `data[i].embedding` (zero vectors of `get_embedding_dimension()` on any failure, so the dimension must
  match its table: 384 for all-MiniLM-L6-v2).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from openai import NOT_GIVEN, AsyncOpenAI, AuthenticationError

from tests.conftest import make_settings
from tests.fixtures.language import HELLO_ANSWER, HELLO_PROMPT, WEATHER_PROMPT, WEATHER_TOOL, TinyLM

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
HF_TOKEN = "hf_llamafarm_secret_0123456789"
# What LlamaFarm's per-request and project `extra_body` put at the top level of a chat request.
EXTRA_BODY = {"n_ctx": 4096, "huggingface_token": HF_TOKEN, "tool_choice": "auto"}
# LlamaFarm's `_tool_to_openai_format(ToolDefinition)`: name, description, parameters.
LF_TOOL = {"type": "function", "function": {"name": WEATHER_TOOL["function"]["name"],
                                             "description": WEATHER_TOOL["function"]["description"],
                                             "parameters": WEATHER_TOOL["function"]["parameters"]}}


@dataclass
class Runtime:
    """A live runtime and the LlamaFarm model config pointing at it."""

    base_url: str  # LlamaFarm's `base_url` (ends with /v1)
    chat_model: str
    tools_model: str


def _serve(tmp: Path, **settings: Any) -> Iterator[str]:
    from server import create_app
    from tests.hardening import start_uvicorn

    server, runner, url = start_uvicorn(create_app(make_settings(tmp, **settings)))
    try:
        yield url
    finally:
        server.handle_exit(signal.SIGTERM, None)
        runner.join(30)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, tiny_lm: TinyLM) -> Iterator[Runtime]:
    """The runtime started with a LlamaFarm project file as its config (as docs/llamafarm.md shows)."""
    tmp = tmp_path_factory.mktemp("llamafarm")
    project = tmp / "llamafarm.yaml"
    project.write_text(f"""version: v1
name: farm
namespace: default
runtime:
  default_model: chat
  models:
    - name: chat
      provider: universal
      model: {tiny_lm.path}
      base_url: http://127.0.0.1:11540/v1
      keep_loaded: true
      transformers:
        model_type: text
      extra_body:
        n_ctx: 4096
    - name: agent
      provider: universal
      model: {tiny_lm.tools_path}
      transformers:
        model_type: text
    - name: fast
      provider: ollama
      model: gemma3:1b
""")
    for url in _serve(tmp, config=project, max_loaded_models=8):
        yield Runtime(url + "/v1", str(tiny_lm.path), str(tiny_lm.tools_path))


def check_health(base_url: str, **kw: Any) -> dict[str, Any]:
    """UniversalProvider.check_health, reduced to what it reads."""
    base = base_url.replace("/v1", "").rstrip("/")
    health = requests.get(f"{base}/health", timeout=2.0, **kw)
    assert 200 <= health.status_code < 300, health.text
    data = health.json()
    device = data.get("device", {})
    device_type = device.get("type", "unknown") if isinstance(device, dict) else device
    models = requests.get(f"{base}/v1/models", timeout=1.0, **kw)
    ids = [m.get("id") for m in models.json().get("data", []) if m.get("id")] if models.ok else []
    return {"device": device_type, "models": ids, "loaded_models": data.get("loaded_models", []),
            "models_status": models.status_code}


async def lf_chat(base_url: str, model: str, messages: list[dict[str, Any]], *, stream: bool,
                  tools: list[dict[str, Any]] | None = None, api_key: str = "universal",
                  model_api_parameters: dict[str, Any] | None = None, **kw: Any) -> Any:
    """LFAgentClientOpenAI.chat / stream_chat with the native tool strategy; returns the completion or the
    list of streamed chunks."""
    client = AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)
    try:
        response = await client.chat.completions.create(
            messages=messages, model=model, tools=tools or NOT_GIVEN,  # type: ignore[arg-type]
            **(model_api_parameters or {"temperature": 0}), extra_body=EXTRA_BODY, stream=stream, **kw)
        if not stream:
            return response
        return [chunk async for chunk in response]  # type: ignore[union-attr]
    finally:
        await client.close()


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ----- health and model list -----------------------------------------------------------------------------
def test_health_check_reads_device_type_and_model_ids(runtime: Runtime) -> None:
    before = check_health(runtime.base_url)
    assert before["device"] in ("cpu", "cuda", "mps") and before["models_status"] == 200
    assert {"chat", "agent"} <= set(before["models"])  # the llamafarm.yaml names, as aliases
    assert "fast" not in before["models"]  # provider: ollama is not ours
    assert isinstance(before["loaded_models"], list)
    asyncio.run(lf_chat(runtime.base_url, runtime.chat_model, [{"role": "user", "content": "hi"}], stream=False,
                        max_tokens=2))
    after = check_health(runtime.base_url)
    assert runtime.chat_model in after["loaded_models"] and runtime.chat_model in after["models"]


def test_health_and_models_answer_within_llamafarms_timeouts_during_generation(runtime: Runtime,
                                                                               tiny_lm: TinyLM) -> None:
    """LlamaFarm marks the runtime unhealthy after 2 s on /health (1 s on /v1/models): both must answer fast
    while a model loads and generates."""
    done = threading.Event()

    def generate() -> None:
        asyncio.run(lf_chat(runtime.base_url, str(tiny_lm.random_path), [{"role": "user", "content": "hi"}],
                            stream=True, max_tokens=300, model_api_parameters={"temperature": 1.0}))
        done.set()

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    latencies = []
    while not done.is_set() and len(latencies) < 20:
        start = time.perf_counter()
        check_health(runtime.base_url)  # raises on a timeout
        latencies.append(time.perf_counter() - start)
    worker.join(60)
    assert latencies and max(latencies) < 1.0, latencies


# ----- chat ----------------------------------------------------------------------------------------------
def test_streamed_chat_with_extra_body_and_bearer_universal(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    messages = [{"role": "system", "content": "You are a farm assistant."}, {"role": "user", "content": HELLO_PROMPT}]
    chunks = asyncio.run(lf_chat(runtime.base_url, runtime.chat_model, messages[1:], stream=True))
    assert streamed_text(chunks) == HELLO_ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len({c.id for c in chunks}) == 1
    with_system = asyncio.run(lf_chat(runtime.base_url, runtime.chat_model, messages, stream=True, max_tokens=5))
    assert [c.choices[0].finish_reason for c in with_system if c.choices][-1] in ("stop", "length")
    assert HF_TOKEN not in caplog.text  # the per-request Hugging Face token is never logged


def test_alias_name_is_accepted_too(runtime: Runtime) -> None:
    out = asyncio.run(lf_chat(runtime.base_url, "chat", [{"role": "user", "content": HELLO_PROMPT}], stream=False))
    assert out.model == "chat" and out.choices[0].message.content == HELLO_ANSWER


def test_streamed_native_tool_call(runtime: Runtime) -> None:
    chunks = asyncio.run(lf_chat(runtime.base_url, runtime.tools_model, [{"role": "user", "content": WEATHER_PROMPT}],
                                 stream=True, tools=[LF_TOOL]))
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:  # how an OpenAI-style consumer assembles streamed tool calls
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    [call] = calls.values()
    assert call["id"] and call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}


def test_non_streamed_tool_call_and_tool_result_turn(runtime: Runtime) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": WEATHER_PROMPT}]
    out = asyncio.run(lf_chat(runtime.base_url, runtime.tools_model, messages, stream=False, tools=[LF_TOOL]))
    [call] = out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    messages += [out.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    follow = asyncio.run(lf_chat(runtime.base_url, runtime.tools_model, messages, stream=False, tools=[LF_TOOL],
                                 max_tokens=8))
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_tools_on_a_model_without_tool_support_are_served_not_refused(runtime: Runtime) -> None:
    """LlamaFarm sends its agent's tools to whatever model is configured: a template without tools gets them
    from the runtime (a system-prompt block) and answers in text or valid calls, never a 400."""

    async def call() -> tuple[str, list[Any]]:
        client = AsyncOpenAI(api_key="universal", base_url=runtime.base_url, max_retries=0)
        async with client:
            raw = await client.chat.completions.with_raw_response.create(
                messages=[{"role": "user", "content": HELLO_PROMPT}], model=runtime.chat_model,
                tools=[LF_TOOL], temperature=0, extra_body=EXTRA_BODY, stream=True)  # type: ignore[list-item]
            stream = raw.parse()  # the SDK hands streams back without awaiting
            return raw.headers.get("x-ignored-params", ""), [c async for c in stream]  # type: ignore[attr-defined]

    ignored, chunks = asyncio.run(call())
    assert "tools" not in ignored.split(",")
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    calls = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert finish and (streamed_text(chunks) or calls)
    assert all(t.function.name == LF_TOOL["function"]["name"] for t in calls if t.function and t.function.name)


# ----- RAG embedder --------------------------------------------------------------------------------------
class Embedder:
    """UniversalEmbedder's HTTP calls (validate_config, _call_universal_api, embed, embed_text)."""

    def __init__(self, base: str, model: str = MINILM, batch_size: int = 32, api_key: str = "universal") -> None:
        self.base_url = base if base.endswith("/v1") else f"{base}/v1"
        self.model, self.batch_size, self.api_key = model, batch_size, api_key
        self.payloads: list[dict[str, Any]] = []

    def validate_config(self) -> bool:
        if requests.get(self.base_url.replace("/v1", "/health"), timeout=5).status_code != 200:
            return False
        return requests.get(f"{self.base_url}/models", timeout=5).status_code == 200

    def call(self, texts: list[str]) -> dict[str, Any]:
        payload = {"model": self.model, "input": texts if len(texts) > 1 else texts[0]}
        self.payloads.append(payload)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"}
        response = requests.post(f"{self.base_url}/embeddings", json=payload, headers=headers, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    def embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            out += [item["embedding"] for item in self.call(texts[i: i + self.batch_size])["data"]]
        return out

    def embed_text(self, text: str) -> list[float]:
        return self.call([text])["data"][0]["embedding"]


def test_rag_embedder_default_model_string_and_list_inputs(runtime: Runtime) -> None:
    import numpy as np

    embedder = Embedder(runtime.base_url.removesuffix("/v1"))  # LlamaFarm appends /v1 itself
    assert embedder.validate_config()
    texts = [f"llamas graze on the farm, note {i}" for i in range(33)]  # two batches: 32, then 1
    vectors = np.array(embedder.embed(texts), dtype=np.float32)
    assert [type(p["input"]) for p in embedder.payloads] == [list, str]  # one text goes as a plain string
    assert vectors.shape == (33, 384)  # LlamaFarm's dimension table says 384 for all-MiniLM-L6-v2
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    single = np.array(embedder.embed_text(texts[0]), dtype=np.float32)
    assert float(single @ vectors[0]) > 0.9999  # alone or in a batch, the same vector
    assert float(single @ vectors[1]) < 0.9999


# ----- with the runtime's API key set to LlamaFarm's default key -----------------------------------------
@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A runtime started with UNIVERSAL_RUNTIME_API_KEY=universal (LlamaFarm's default universal_api_key)."""
    yield from _serve(tmp_path_factory.mktemp("llamafarm-keyed"), api_key="universal")


def test_with_api_key_universal(keyed: str, tiny_lm: TinyLM) -> None:
    """Chat and embeddings carry the key and work; the health check sends no key: /health still answers
    (LlamaFarm reports the runtime healthy) while /v1/models is a 401 it reads as an empty list."""
    health = check_health(keyed + "/v1")
    assert health["device"] in ("cpu", "cuda", "mps") and health["models_status"] == 401 and health["models"] == []
    chunks = asyncio.run(lf_chat(keyed + "/v1", str(tiny_lm.path), [{"role": "user", "content": HELLO_PROMPT}],
                                 stream=True))
    assert streamed_text(chunks) == HELLO_ANSWER
    with pytest.raises(AuthenticationError):
        asyncio.run(lf_chat(keyed + "/v1", str(tiny_lm.path), [{"role": "user", "content": "hi"}], stream=False,
                            api_key="wrong"))


def test_the_llamafarm_docs_example_is_a_valid_runtime_config() -> None:
    """docs/llamafarm.md's llamafarm.yaml starts the runtime as is (alias `chat`, pinned)."""
    import re

    from core.model_config import parse_model_config

    doc = (Path(__file__).resolve().parents[1] / "docs" / "llamafarm.md").read_text()
    [project] = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    aliases = parse_model_config(project)
    assert set(aliases) >= {"chat"} and aliases["chat"].pin and aliases["chat"].type == "causal"

"""Causal language models (category "causal"): chat and text completions on any transformers causal LM —
a local folder, a hub id or a GGUF file.

`CausalLM` serves a model whose tokenizer and weights loader.py loaded (weights.py; GGUF conversions are
cached, see gguf.py) with the decode engine (engine.py).

Extension point for vision-language models: a subclass overrides `prepare_chat` to build its inputs with its
processor and returns a `Prepared` whose `extra_inputs` (pixel values, image sizes...) reach the prefill
forward only; everything after the prompt (batching, sampling, streaming, tools, JSON) is shared.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from core.contract import BaseModel, LoadContext, module_bytes
from core.errors import InvalidRequest
from core.load_options import compile_mode
from models.language import templates as ct
from models.language import tool_prompt
from models.language.compiled_backend import STATIC_LEN, CompiledBackend
from models.language.cpu_tuning import tune
from models.language.engine import Engine, Event, RowRequest
from models.language.sampling import SamplingParams
from models.language.structured import Grammars, response_format_grammar, tool_call_grammar
from models.language.tools import ToolStreamParser
from models.language.transformers_backend import TransformersBackend

logger = logging.getLogger("universal_runtime.language")
PARAM_NAMES = {f.name for f in fields(SamplingParams)}


@dataclass
class Prepared:
    """A tokenized prompt ready for the engine, with what the request turned on."""

    input_ids: list[int]
    grammar: tuple[str, str] | None = None  # (grammar, request param it came from)
    parse_tools: bool = False
    tool_names: set[str] = field(default_factory=set)
    implicit_stops: list[str] = field(default_factory=list)
    ignored: set[str] = field(default_factory=set)
    extra_inputs: dict[str, Any] | None = None


class Job:
    """The rows of one request: events arrive on the event loop; `cancel()` stops them within a token."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rows: int, parse_tools: bool,
                 tool_names: set[str] | None = None) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.requests: list[RowRequest] = []
        self.remaining = rows
        self.parsers = [ToolStreamParser(tool_names) for _ in range(rows)] if parse_tools else None
        self._buffer: list[Event] = []
        self._wake_pending = False
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        """Called on the engine thread. Events buffered while a wake-up is pending share it (waking the loop
        from another thread costs about a millisecond)."""
        with self._lock:
            self._buffer.append(event)
            if self._wake_pending:
                return
            self._wake_pending = True
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            events, self._buffer = self._buffer, []
            self._wake_pending = False
        for event in events:
            self.queue.put_nowait(event)

    def cancel(self) -> None:
        for req in self.requests:
            req.cancel.set()

    async def events(self) -> AsyncIterator[Event]:
        """Every event of every row until all rows finished (tool calls parsed when asked)."""
        while self.remaining:
            event = await self.queue.get()
            if event.finish_reason is not None:
                self.remaining -= 1
            if self.parsers is None:
                yield event
                continue
            parser = self.parsers[event.index]
            if event.finish_reason is None:
                event.text = parser.feed(event.text)
                yield event
                continue
            rest, calls = parser.finish()
            if rest:
                yield Event(event.index, text=rest)
            if calls:
                event.tool_calls = calls
                if event.finish_reason == "stop":
                    event.finish_reason = "tool_calls"
            yield event


class CausalLM(BaseModel):
    """A transformers causal LM served through the continuous-batching engine."""

    category = "causal"
    capabilities = frozenset({"chat", "completions"})
    engine_name = "transformers"
    compilable = True  # the `compile` option applies (compiled_backend.py)

    def __init__(self, model_id: str, ctx: LoadContext, model: Any, tokenizer: Any, max_batch: int = 16) -> None:
        super().__init__(model_id, ctx)
        model, self.threads = tune(model, ctx)
        self.model = model
        self.config = model.config
        gen = getattr(model, "generation_config", None)
        eos: set[int] = set()
        for source in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
            eos.update([source] if isinstance(source, int) else list(source or []))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
        vocab = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None \
            else len(tokenizer)
        self.setup(tokenizer, eos, vocab, _context_length(self.config, tokenizer))
        if gen is not None and getattr(gen, "do_sample", False):
            self.defaults = {k: getattr(gen, k) for k in ("temperature", "top_p", "top_k")
                             if getattr(gen, k, None) is not None}
        self.engine = Engine(self._backend(model, pad, ctx), tokenizer, eos_ids=eos,
                             device=model.device, max_batch=max_batch, name=model_id.rsplit("/", 1)[-1],
                             threads=self.threads)

    def _backend(self, model: Any, pad: int, ctx: LoadContext) -> TransformersBackend:
        """The eager backend, or with the `compile` option the compiled one (compiled here, in the load)."""
        mode = compile_mode(ctx.options.get("compile"))
        if mode is False:
            return TransformersBackend(model, pad, model.device)
        if not self.compilable:
            raise InvalidRequest(f"compile is not supported for {self.describe()['sub_kind']} models.",
                                 param="compile")
        size = ctx.options.get("context_size") or STATIC_LEN["cpu" if model.device.type == "cpu" else "gpu"]
        backend = CompiledBackend(model, pad, model.device, min(int(size), self.context_length), mode)
        ctx.progress(f"compiling the decode step (static cache of {backend.static_len} positions)")
        seconds = backend.warm_up(pad)
        ctx.progress(f"compiled in {seconds:.1f} s")
        return backend

    def setup(self, tokenizer: Any, eos: set[int], vocab: int, context_length: int) -> None:
        """What every engine's model shares: tokenizer, chat template, end tokens, grammars, context."""
        self.tokenizer = tokenizer
        self.template = ct.template_of(tokenizer)
        self.eos_ids = eos
        self.defaults: dict[str, Any] = {}
        self.grammars = Grammars(tokenizer, vocab, eos)
        self.context_length = context_length

    # ----- capabilities --------------------------------------------------------------------------
    @property
    def tools_supported(self) -> bool:
        return ct.supports_tools(self.template)

    def describe(self) -> dict[str, Any]:
        backend = getattr(getattr(self, "engine", None), "backend", None)
        compiled = isinstance(backend, CompiledBackend)
        return {"sub_kind": "causal-lm", "engine": self.engine_name,
                "architecture": (getattr(self.config, "architectures", None) or [None])[0],
                "chat_template": self.template is not None, "tools": self.tools_supported,
                "context_length": self.context_length, "dtype": self.ctx.dtype,
                "threads": getattr(self, "threads", None), "compiled": compiled,
                "static_cache": backend.static_len if compiled else None}

    def memory_bytes(self) -> int:
        return module_bytes(self.model) + self.engine.backend.memory_bytes()

    # ----- prompts (run on the worker thread) ----------------------------------------------------
    def prepare_chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                     tool_choice: Any = None, response_format: dict[str, Any] | None = None,
                     parallel_tool_calls: bool = True) -> Prepared:
        """Render and tokenize a conversation; set up tool parsing and grammar constraints.

        Tools reach every model: through its template when it renders `tools`, else as a system-prompt block
        the runtime writes (tool_prompt.py). A required or named `tool_choice` forces valid calls; `auto` on
        a model prompted by the runtime allows text or valid calls."""
        msgs = ct.normalize(messages)
        prepared = Prepared(input_ids=[], grammar=response_format_grammar(response_format))
        own = not self.tools_supported  # the runtime, not the template, writes tools and tool turns
        msgs, use_tools = self.setup_tools(msgs, prepared, tools, tool_choice, parallel_tool_calls, own)
        text = ct.render(self.tokenizer, msgs, tools if use_tools else None)
        if self.template is None:
            prepared.implicit_stops = list(ct.FALLBACK_STOPS)
        prepared.input_ids = self.tokenizer(text, add_special_tokens=self.template is None)["input_ids"]
        self._check_length(prepared.input_ids, "messages")
        return prepared

    def setup_tools(self, msgs: list[dict[str, Any]], prepared: Prepared, tools: list[dict[str, Any]] | None,
                    tool_choice: Any, parallel: bool, own: bool) -> tuple[list[dict[str, Any]], bool]:
        """(messages, whether the template gets `tools`): tool parsing and grammars set on `prepared`; with
        `own`, the tools block and the tool turns are written into the messages (tool_prompt.py)."""
        use_tools = bool(tools) and tool_choice != "none"
        if own:
            msgs = tool_prompt.plain_tool_turns(msgs)
            if use_tools:
                msgs = tool_prompt.with_tools(msgs, tools or [])
        if use_tools:
            prepared.parse_tools = True
            prepared.tool_names = {str((t.get("function") or {}).get("name")) for t in tools or []}
            forced = _forced_tool(tool_choice)
            hermes = own or ct.hermes_style(self.template)
            if forced is not False:  # a named function is called once (as vLLM does); `required`: one or more
                many = parallel and forced is None
                prepared.grammar = (tool_call_grammar(tools or [], forced, hermes, many), "tool_choice")
            elif own and prepared.grammar is None:
                prepared.grammar = (tool_call_grammar(tools or [], None, True, parallel, allow_text=True), "tools")
        return msgs, use_tools and not own

    def prepare_completion(self, prompt: str | list[int], *, response_format: dict[str, Any] | None = None,
                           param: str = "prompt") -> Prepared:
        """Tokenize a legacy completion prompt (text, or token ids fed as given)."""
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
            if not ids:
                ids = [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else min(self.eos_ids)]
        else:
            vocab = self.grammars.vocab_size
            if any(t < 0 or t >= vocab for t in prompt):
                raise InvalidRequest(f"Token ids must be in [0, {vocab}).", param=param)
            ids = list(prompt)
        self._check_length(ids, param)
        return Prepared(input_ids=ids, grammar=response_format_grammar(response_format))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _check_length(self, ids: list[int], param: str) -> None:
        if len(ids) >= self.context_length:
            raise InvalidRequest(f"The prompt has {len(ids)} tokens; this model's context is "
                                 f"{self.context_length} tokens.", param=param)

    def matchers(self, prepared: Prepared, n: int) -> list[Any] | None:
        """One fresh grammar matcher per choice (worker thread: compiling may take a moment)."""
        if prepared.grammar is None:
            return None
        grammar, param = prepared.grammar
        return [self.grammars.matcher(grammar, param) for _ in range(n)]

    # ----- generation ----------------------------------------------------------------------------
    def start(self, prepared: Prepared, options: dict[str, Any], n: int = 1, matchers: list[Any] | None = None,
              first_index: int = 0, job: Job | None = None) -> Job:
        """Submit `n` rows for one prompt; returns the job (events on the running loop)."""
        params = self.sampling_params(prepared, options)
        job = job or Job(asyncio.get_running_loop(), n, prepared.parse_tools, prepared.tool_names)
        rows = []
        for i in range(n):
            p = replace(params, seed=None if params.seed is None else params.seed + i)
            rows.append(RowRequest(input_ids=prepared.input_ids, params=p, emit=job.emit, index=first_index + i,
                                   matcher=matchers[i] if matchers else None, extra_inputs=prepared.extra_inputs))
        job.requests += rows
        self.engine.submit(rows)
        return job

    def start_many(self, prompts: list[tuple[Prepared, list[Any]]], options: dict[str, Any], n: int = 1) -> Job:
        """Submit `n` rows for each (prepared prompt, stop matchers) as one job, rows numbered prompt by prompt
        (the choices of a /v1/completions request with a list of prompts)."""
        job = Job(asyncio.get_running_loop(), len(prompts) * n, False)
        for i, (prepared, matchers) in enumerate(prompts):
            self.start(prepared, options, n, matchers, first_index=i * n, job=job)
        return job

    def sampling_params(self, prepared: Prepared, options: dict[str, Any]) -> SamplingParams:
        """Request options (None = unset) over the model's generation defaults; max tokens fit the context."""
        given = {k: v for k, v in options.items() if v is not None and k in PARAM_NAMES}
        room = self.context_length - len(prepared.input_ids)
        wanted = given.pop("max_new_tokens", None)
        merged = {**self.defaults, **given}
        merged["stop"] = list(merged.get("stop") or []) + prepared.implicit_stops
        return SamplingParams(max_new_tokens=min(wanted or room, room), **merged)

    def close(self) -> None:
        self.engine.close()
        self.model = None
        super().close()


def _forced_tool(tool_choice: Any) -> str | None | bool:
    """False: no forcing; None: some tool must be called; str: that tool must be called."""
    if tool_choice == "required":
        return None
    if isinstance(tool_choice, dict):
        return (tool_choice.get("function") or {}).get("name") or None
    return False


def _context_length(config: Any, tokenizer: Any) -> int:
    text = getattr(config, "text_config", None) or config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", 0) or 0
    return limit if 0 < limit < 10_000_000 else 2048

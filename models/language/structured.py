"""Structured output with llguidance: `response_format` (json_object / json_schema) and forced tool calls
become a grammar whose token mask is applied at every decoding step, so the output always parses."""

from __future__ import annotations

import json
import threading
from typing import Any

from core.errors import InvalidRequest

# Compact JSON: no free whitespace, so a constrained answer ends as soon as the value is complete.
JSON_OPTIONS = {"whitespace_flexible": False}


class Grammars:
    """Compiles grammars for one tokenizer (the llguidance tokenizer is built once, on first use)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = sorted(eos_ids)
        self._ll: Any = None
        self._lock = threading.Lock()

    def ll_tokenizer(self) -> Any:
        with self._lock:
            if self._ll is None:
                import llguidance.hf

                eos = self.eos_ids[0] if len(self.eos_ids) == 1 else self.eos_ids
                n_vocab = max(self.vocab_size, len(self.tokenizer))
                self._ll = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=n_vocab, eos_token=eos)
            return self._ll

    def matcher(self, grammar: str, param: str) -> Any:
        """A fresh matcher for one sequence; a grammar llguidance rejects is a 400 naming `param`."""
        import llguidance

        tok = self.ll_tokenizer()
        error = llguidance.LLMatcher.validate_grammar(grammar, tok)
        if error and not error.startswith("WARNING"):
            raise InvalidRequest(f"Unusable schema or grammar: {error.splitlines()[0][:300]}", param=param)
        matcher = llguidance.LLMatcher(tok, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequest(f"Unusable schema or grammar: {matcher.get_error()[:300]}", param=param)
        return matcher


def json_grammar(schema: dict[str, Any] | bool, param: str) -> str:
    """An llguidance grammar for a JSON schema."""
    import llguidance

    try:
        return llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), overrides=JSON_OPTIONS)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidRequest(f"Invalid JSON schema: {exc}", param=param) from exc


def response_format_grammar(response_format: dict[str, Any] | None) -> tuple[str, str] | None:
    """(grammar, param) for an OpenAI `response_format`, or None for plain text."""
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_grammar({"type": "object"}, "response_format"), "response_format"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequest("response_format.json_schema must be an object with a 'schema'.",
                                 param="response_format.json_schema")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict | bool):
            raise InvalidRequest("response_format.json_schema.schema must be a JSON schema object.",
                                 param="response_format.json_schema.schema")
        return json_grammar(schema, "response_format.json_schema.schema"), "response_format.json_schema.schema"
    raise InvalidRequest(f"Unknown response_format type '{kind}'; use text, json_object or json_schema.",
                         param="response_format.type")


def tool_call_schema(tools: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    """Schema of one call `{"name": ..., "arguments": {...}}` to the named tool (or any of them). Arguments
    objects that list their properties and say nothing of others get no others (as OpenAI's strict mode)."""
    options = []
    for tool in tools:
        fn = tool.get("function") or {}
        if name is not None and fn.get("name") != name:
            continue
        params = fn.get("parameters") or {"type": "object"}
        if isinstance(params, dict) and params.get("properties") and "additionalProperties" not in params:
            params = {**params, "additionalProperties": False}  # small models invent keys otherwise
        options.append({"type": "object", "properties": {"name": {"const": fn.get("name")}, "arguments": params},
                        "required": ["name", "arguments"], "additionalProperties": False})
    if not options:
        raise InvalidRequest(f"tool_choice names a function '{name}' that is not in tools.", param="tool_choice")
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_grammar(tools: list[dict[str, Any]], name: str | None, hermes: bool, parallel: bool = False,
                      allow_text: bool = False) -> str:
    """A grammar for tool calls whose arguments validate against the function's `parameters`.

    Hermes style: `<tool_call>` JSON `</tool_call>` blocks, one or (with `parallel`) several; with
    `allow_text` (tool_choice auto) the answer may instead be text that does not start with `<` and holds
    no `<tool_call>`. Otherwise one bare JSON call (templates of the Llama-3.1 kind)."""
    schema = {**tool_call_schema(tools, name), "x-guidance": JSON_OPTIONS}
    if not hermes:
        return json_grammar(schema, "tools")
    import llguidance

    lines = [f"start: {'TEXT | ' if allow_text else ''}calls",
             'calls: call ("\\n" call)*' if parallel else "calls: call",
             f'call: "<tool_call>\\n" %json {json.dumps(schema)} "\\n</tool_call>"']
    if allow_text:
        lines.append("TEXT: /[^<](.|\\n)*/ & ~/(.|\\n)*<tool_call>(.|\\n)*/")
    return llguidance.LLMatcher.grammar_from_lark("\n".join(lines) + "\n")

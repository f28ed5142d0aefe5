"""Runtime settings: environment variables (UNIVERSAL_RUNTIME_*), overridden by command-line flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]
PREFIX = "UNIVERSAL_RUNTIME_"


def _env(name: str, *legacy: str) -> AliasChoices:
    return AliasChoices(name, PREFIX + name.upper(), *legacy)


class Settings(BaseSettings):
    """Every setting, its environment variable (UNIVERSAL_RUNTIME_<NAME>) and its default."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", env_ignore_empty=True)

    host: str = Field("127.0.0.1", validation_alias=_env("host", "TRANSFORMERS_HOST"),
                      description="Address to bind. Non-loopback needs an API key or --insecure.")
    port: int = Field(11540, validation_alias=_env("port", "TRANSFORMERS_PORT"), description="TCP port.")
    insecure: bool = Field(False, validation_alias=_env("insecure"),
                           description="Allow a non-loopback bind without an API key.")
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto", validation_alias=_env("device"), description="Compute device; auto picks CUDA > MPS > CPU.")
    force_cpu: bool = Field(False, validation_alias=_env("force_cpu", "TRANSFORMERS_FORCE_CPU"),
                            description="Always use the CPU (legacy TRANSFORMERS_FORCE_CPU=1).")
    skip_mps: bool = Field(False, validation_alias=_env("skip_mps", "TRANSFORMERS_SKIP_MPS"),
                           description="Never pick Apple MPS in auto mode (legacy TRANSFORMERS_SKIP_MPS=1).")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", validation_alias=_env("dtype"),
        description="Weights dtype; auto = fp16 on CUDA/MPS, fp32 on CPU (bf16 for chat models of 50M+ parameters "
                    "on CPUs with AVX512-BF16 or AMX).")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", validation_alias=_env("quantization"),
        description="bitsandbytes quantization for causal LMs (CUDA only).")
    torch_threads: int = Field(0, validation_alias=_env("torch_threads"),
                               description="torch intra-op threads; 0 = auto (1 on machines with <= 2 cores; a chat "
                                           "model of 50M+ parameters decodes on all physical cores).")
    max_loaded_models: int = Field(4, ge=1, validation_alias=_env("max_loaded_models"),
                                   description="Most models kept loaded at once (LRU eviction beyond).")
    memory_budget: str = Field("80%", validation_alias=_env("memory_budget"),
                               description="Memory for loaded models: bytes (e.g. 8000000000) or percent of "
                                           "device memory (e.g. 80%).")
    idle_ttl_seconds: float = Field(1800.0, ge=0, validation_alias=_env("idle_ttl_seconds"),
                                    description="Unload a model unused this long (0 = never).")
    preload: CommaList = Field(default_factory=list, validation_alias=_env("preload"),
                               description="Models to load at start-up, comma-separated (category:model or model).")
    pinned: CommaList = Field(default_factory=list, validation_alias=_env("pinned"),
                              description="Models never evicted, comma-separated.")
    output_dir: Path = Field(Path("~/.llamafarm/outputs/images"), validation_alias=_env("output_dir"),
                             description="Where generated images are written.")
    media_dirs: CommaList = Field(default_factory=list, validation_alias=_env("media_dirs"),
                                  description="Server directories media paths may point into, comma-separated.")
    allow_url_fetch: bool = Field(False, validation_alias=_env("allow_url_fetch"),
                                  description="Fetch http(s) media URLs.")
    allow_private_urls: bool = Field(False, validation_alias=_env("allow_private_urls"),
                                     description="Let URL fetching reach loopback/private/link-local addresses.")
    api_key: str | None = Field(None, validation_alias=_env("api_key"),
                                description="Bearer key required on every route but /health and image files.")
    allowed_models: CommaList = Field(default_factory=list, validation_alias=_env("allowed_models"),
                                      description="Glob patterns of allowed model ids/aliases (empty = all).")
    cors_origins: CommaList = Field(default_factory=list, validation_alias=_env("cors_origins"),
                                    description="CORS allowed origins, comma-separated (none by default).")
    max_body_mb: float = Field(50.0, gt=0, validation_alias=_env("max_body_mb"),
                               description="Largest request body in MiB (413 beyond).")
    max_image_pixels: int = Field(40_000_000, gt=0, validation_alias=_env("max_image_pixels"),
                                  description="Largest decoded image in pixels (decompression-bomb guard).")
    max_audio_seconds: float = Field(3600.0, gt=0, validation_alias=_env("max_audio_seconds"),
                                     description="Longest accepted audio input in seconds.")
    max_speech_input_chars: int = Field(4096, gt=0, validation_alias=_env("max_speech_input_chars"),
                                        description="Longest `input` of POST /v1/audio/speech, in characters.")
    trust_remote_code: bool = Field(False, validation_alias=_env("trust_remote_code"),
                                    description="Allow custom model code for every model (off; prefer per model).")
    trust_remote_code_models: CommaList = Field(
        default_factory=list, validation_alias=_env("trust_remote_code_models"),
        description="Glob patterns of models allowed to run custom code.")
    max_queue_per_model: int = Field(64, ge=1, validation_alias=_env("max_queue_per_model"),
                                     description="Requests admitted per loaded model before 429.")
    responses_store_size: int = Field(1000, ge=0, validation_alias=_env("responses_store_size"),
                                      description="Responses kept in memory for previous_response_id and GET "
                                                  "/v1/responses/{id} (least recently used dropped; 0 = none).")
    batch_wait_ms: float = Field(5.0, ge=0, validation_alias=_env("batch_wait_ms"),
                                 description="How long encoder micro-batching waits for one more request before "
                                             "running a batch (the oldest request waits at most 6x this).")
    max_batch_size: int = Field(32, ge=1, validation_alias=_env("max_batch_size"),
                                description="Largest encoder micro-batch.")
    trace_encoders: bool = Field(True, validation_alias=_env("trace_encoders"),
                                 description="Run text encoders as TorchScript traces (checked against the model) "
                                             "so a forward pass does not hold the GIL.")
    default_chat_model: str = Field("HuggingFaceTB/SmolLM2-135M-Instruct",
                                    validation_alias=_env("default_chat_model"),
                                    description="Model behind the alias `default` for chat and completions.")
    default_embedding_model: str = Field("sentence-transformers/all-MiniLM-L6-v2",
                                         validation_alias=_env("default_embedding_model"),
                                         description="Model behind `default` (and a missing model) for encoders.")
    default_image_model: str = Field("stabilityai/sd-turbo", validation_alias=_env("default_image_model"),
                                     description="Model for image requests that name none.")
    default_vision_model: str = Field("google/vit-base-patch16-224", validation_alias=_env("default_vision_model"),
                                      description="Model for vision classification that names none.")
    default_clip_model: str = Field("openai/clip-vit-base-patch32", validation_alias=_env("default_clip_model"),
                                    description="Model for CLIP zero-shot that names none.")
    default_audio_model: str = Field("openai/whisper-tiny", validation_alias=_env("default_audio_model"),
                                     description="Model for speech-to-text that names none.")
    default_multimodal_model: str = Field("Salesforce/blip-image-captioning-base",
                                          validation_alias=_env("default_multimodal_model"),
                                          description="Model for captioning / VQA that names none.")
    config: Path | None = Field(None, validation_alias=_env("config"),
                                description="Model config YAML (aliases, per-model options; llamafarm.yaml too).")
    log_level: str = Field("info", validation_alias=_env("log_level"), description="Logging level.")
    log_format: Literal["text", "json"] = Field("text", validation_alias=_env("log_format"),
                                                description="Log line format.")
    keep_alive_timeout: float = Field(
        75.0, gt=0, validation_alias=_env("keep_alive_timeout"),
        description="Seconds an idle keep-alive connection stays open. Longer than the 5 s after which httpx "
                    "(and the OpenAI SDKs) drop idle connections, so a client never reuses one being closed.")
    shutdown_timeout: float = Field(30.0, ge=0, validation_alias=_env("shutdown_timeout"),
                                    description="Seconds in-flight requests get to finish at shutdown.")
    hub_timeout: float = Field(1.0, gt=0, validation_alias=_env("hub_timeout"),
                               description="Seconds to wait when probing whether the model hub is reachable.")

    @field_validator("preload", "pinned", "media_dirs", "allowed_models", "cors_origins",
                     "trust_remote_code_models", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("output_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(os.path.expanduser(str(v)))

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def effective_threads(self) -> int:
        if self.torch_threads > 0:
            return self.torch_threads
        cores = os.cpu_count() or 1
        return 1 if cores <= 2 else max(1, cores // 2)

"""Random-weight models at real sizes, built from configs for bench/gpu.py (no downloads).

Each builder saves a folder the server loads through its normal path and returns the in-memory model for
the direct baseline. `tiny=True` gives the same architectures at toy sizes (a CPU smoke run of gpu.py).
Tokenizers are synthetic: a byte-level one with as many ids as the real vocabulary for chat (so the LM
head keeps its real size and every id decodes), MiniLM's BERT vocabulary for embeddings (bge-base's is the
same), a letters-only CLIP tokenizer for diffusion, a byte-level Whisper tokenizer with the real special
tokens for speech (its text vocabulary, and so its embedding matrix, is smaller than Whisper's).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.tiny import TOKENIZER_FILES, minilm_path

# Qwen2.5-0.5B dims; bge-base dims; SD-1.5 UNet/VAE/text encoder dims; Whisper-small dims.
CHAT = {"real": dict(vocab=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                     num_attention_heads=14, num_key_value_heads=2),
        "tiny": dict(vocab=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)}
EMBED = {"real": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
         "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)}
UNET = {"real": dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                     cross_attention_dim=768, attention_head_dim=8,
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        "tiny": dict(sample_size=8, layers_per_block=1, block_out_channels=(8, 16), cross_attention_dim=16,
                     attention_head_dim=2, norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))}
VAE = {"real": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
       "tiny": dict(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, sample_size=16)}
CLIP_TEXT = {"real": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
             "tiny": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)}
WHISPER = {"real": dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, num_mel_bins=80),
           "tiny": dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80)}
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def size(tiny: bool) -> str:
    return "tiny" if tiny else "real"


def chat_tokenizer(vocab_size: int) -> Any:
    """Byte-level BPE tokenizer of exactly `vocab_size` ids with ChatML special tokens.

    Text is tokenized one byte per token (no merges); the ids past the 256 byte symbols are filler words
    (` w0`, ` w1`, ...) that a random model generates and that decode like any other token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for i in range(vocab_size - len(vocab) - len(specials)):
        vocab[f"\u0120w{i}"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def words(n: int) -> str:
    """A prompt text of exactly `n` tokens (one byte each)."""
    return ("abcdefgh" * (n // 8 + 1))[:n]


def build_chat(folder: Path, tiny: bool, device: str, dtype: Any) -> tuple[Any, Any]:
    """Qwen2.5-0.5B-sized Qwen2 causal LM (random weights) + tokenizer, saved to `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    dims = dict(CHAT[size(tiny)])
    tok = chat_tokenizer(dims.pop("vocab"))
    config = Qwen2Config(vocab_size=len(tok), max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **dims)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def build_embedder(folder: Path, tiny: bool) -> Path:
    """bge-base-sized BERT encoder (random weights, BERT uncased vocabulary), saved to `folder`."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, max_position_embeddings=512, **EMBED[size(tiny)])).save_pretrained(folder)
    src = minilm_path()
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, folder / name)
    return folder


def clip_tokenizer() -> Any:
    """A CLIP tokenizer over single letters (no merges): every prompt tokenizes, offline."""
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token="<|endoftext|>")


def build_sd(folder: Path, tiny: bool, device: str, dtype: Any) -> Any:
    """SD-1.5-sized text-to-image pipeline (UNet, VAE, CLIP text encoder; random weights), saved to `folder`."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = clip_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **UNET[size(tiny)])
        vae_dims = VAE[size(tiny)]
        n = len(vae_dims["block_out_channels"])
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                            **vae_dims)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=0,
                                            eos_token_id=1, pad_token_id=1, **CLIP_TEXT[size(tiny)]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder)
    return pipe


def build_whisper(folder: Path, tiny: bool, device: str, dtype: Any, new_tokens: int) -> tuple[Any, Any]:
    """Whisper-small-sized model (random weights) + processor; generation stops after `new_tokens` tokens."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    from tests.fixtures.audio import build_whisper_tokenizer

    tok = build_whisper_tokenizer(words=[])
    ids = tok.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    config = WhisperConfig(vocab_size=len(tok), max_source_positions=1500, max_target_positions=448,
                           pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
                           begin_suppress_tokens=[eot], suppress_tokens=[], **WHISPER[size(tiny)])
    torch.manual_seed(0)
    with torch.device(device):
        model = WhisperForConditionalGeneration(config).to(dtype).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_new_tokens=new_tokens, is_multilingual=True,
        lang_to_id={f"<|{c}|>": ids(f"<|{c}|>") for c in LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50, suppress_tokens=[], begin_suppress_tokens=[eot], return_timestamps=False)
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins),
                                 tokenizer=tok)
    processor.save_pretrained(folder)
    model.save_pretrained(folder)
    return model, processor

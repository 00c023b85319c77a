"""Quiet on healthy models it has never seen: Hugging Face architectures from small configs.

    PYTHONPATH=src python benchmarks/zoo.py                 # all 69 models, ~5 min on 2 CPU cores
    PYTHONPATH=src python benchmarks/zoo.py --only MobileNetV2 --steps 40
    PYTHONPATH=src python benchmarks/zoo.py --only EfficientNet --only MobileViT --fix

Each model is built from a small config (random weights, nothing downloaded: hidden size
32-64, two layers, a vocabulary of 64, 16 tokens, 32x32 images, 50 ms of audio) and trained
on a small task it can learn, with AdamW at 1e-3 from one fixed seed:

- text encoders: which of three keyword tokens a sequence holds (3 classes);
- decoders, mixtures of experts, state-space and recurrent models: language modelling of
  a counting pattern (each token is the previous one plus 1, modulo 24, from a random start);
- encoder-decoders: the counting pattern read from the source and written backwards;
- vision: which colour a bright square at a random place in a noisy image has (3 classes);
- speech: which of four frequencies a noisy tone has (waveforms; a band in a mel-like
  spectrogram for Whisper and AST);
- CLIP and SigLIP: contrastive pairs of eight images (a bright quadrant, in every channel
  or in one) and their one-token captions.

Four things per model, each from the same seed (torch's, NumPy's and Python's `random`
global generators, and the model's initial weights, all alike):

1. `gw.inspect(model, batch)`, then training under `gw.watch(model, every=4)`;
2. training under `gw.watch(model)` at its defaults;
3. training unwatched: the losses of 1 and 2 must equal these bit for bit (dropout,
   SpecAugment and routers draw from the global generators, so anything gradwatch drew
   from them would show here);
4. the findings of both watched runs (kind:severity) and whether the loss fell as a
   healthy run's does (the mean of the last tenth of the steps under half the mean of
   the first five).

Where a watched run is not bit-identical, a fourth run (every=4 without inspect) says
whether inspect or the watcher shifted it. Configs are Hugging Face's defaults but for
their size (and Marian's and Pegasus' ``scale_embedding=True``, as their published
checkpoints have: at d_model 32 and init std 0.02 the token embeddings are otherwise
drowned by unit-amplitude sinusoidal positions and both stay at the pattern's unigram
loss). Some defaults do not train from scratch, and are kept as runs gradwatch should
name: MobileNetV1's classifier dropout of 0.999, EfficientNet's and MobileViT's
BatchNorm weights drawn from N(0, 0.02) (the signal falls under the norms' eps, where they
stop normalising: `norm_gain_too_small`), MobileBERT's un-normalised layers at std 0.02.
With ``--fix``, each run whose loss did not fall is trained again from the model `gw.fix`
makes out of its ``every=4`` diagnosis.

Printed: one row per model, then the crashes, the runs not bit-identical, and the runs
whose loss fell but which drew a warning or an error (false alarms). torchvision is not
used: the PyPI wheel that matches this torch (0.28.0) is a CUDA build that fails to
import beside the CPU torch ("operator torchvision::nms does not exist").
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import gradwatch as gw
from gradwatch import Diagnosis

VOCAB = 64
SEQ = 16
BATCH = 16
SEED = 0
Batch = dict[str, Any]


# -- tasks: pure functions of (step, generator) so every run sees the same data ----------------
def keyword_text(g: torch.Generator) -> Batch:
    """Random tokens with one of three keywords (ids 1..3) at a random place; the class is which."""
    ids = torch.randint(4, VOCAB, (BATCH, SEQ), generator=g)
    labels = torch.randint(0, 3, (BATCH,), generator=g)
    where = torch.randint(1, SEQ, (BATCH,), generator=g)
    ids[torch.arange(BATCH), where] = labels + 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _counting(g: torch.Generator, length: int) -> torch.Tensor:
    start = torch.randint(0, 24, (BATCH, 1), generator=g)
    return 4 + (start + torch.arange(length)) % 24


def counting_lm(g: torch.Generator) -> Batch:
    """Language modelling of a counting pattern: every token but the first is predictable."""
    ids = _counting(g, SEQ)
    return {"input_ids": ids, "labels": ids}


def reversed_pattern(g: torch.Generator) -> Batch:
    """Sequence to sequence: the counting pattern in the source, written backwards as the target."""
    ids = _counting(g, 12)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.flip(1)}


def _quadrant_images(g: torch.Generator, labels: torch.Tensor) -> torch.Tensor:
    """Class c: quadrant c % 4 bright, in every channel for c < 4, else in the second only."""
    x = 0.1 * torch.randn(len(labels), 3, 32, 32, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, col = divmod(c % 4, 2)
        x[i, slice(None) if c < 4 else 1, r * 16 : (r + 1) * 16, col * 16 : (col + 1) * 16] += 1.0
    return x


def coloured_squares(g: torch.Generator) -> Batch:
    """Noisy 32x32 images with a bright 8x8 square at a random place; its colour channel is
    the class (3 classes). Where the square is does not matter: models that pool over
    positions, without absolute position embeddings (Swin, BEiT, EfficientNet), can learn it."""
    labels = torch.randint(0, 3, (BATCH,), generator=g)
    x = 0.1 * torch.randn(BATCH, 3, 32, 32, generator=g)
    corners = torch.randint(0, 25, (BATCH, 2), generator=g).tolist()
    for i, (c, (r, col)) in enumerate(zip(labels.tolist(), corners, strict=True)):
        x[i, c, r : r + 8, col : col + 8] += 1.0
    return {"pixel_values": x, "labels": labels}


FREQS = (500.0, 1000.0, 2000.0, 4000.0)


def tones(g: torch.Generator) -> Batch:
    """50 ms of a noisy tone at 16 kHz whose frequency is the class (4 classes)."""
    labels = torch.randint(0, 4, (BATCH,), generator=g)
    t = torch.arange(800) / 16000.0
    f = torch.tensor(FREQS)[labels][:, None]
    phase = 2 * math.pi * torch.rand(BATCH, 1, generator=g)
    x = torch.sin(2 * math.pi * f * t + phase) + 0.1 * torch.randn(BATCH, 800, generator=g)
    return {"input_values": x, "labels": labels}


def _bands(g: torch.Generator, bins: int, frames: int, mels_first: bool) -> Batch:
    labels = torch.randint(0, 4, (BATCH,), generator=g)
    x = 0.1 * torch.randn(BATCH, bins, frames, generator=g)
    for i, c in enumerate(labels.tolist()):
        x[i, 2 + 3 * c : 4 + 3 * c] += 1.0
    return {"labels": labels, "x": x if mels_first else x.transpose(1, 2)}


def whisper_bands(g: torch.Generator) -> Batch:
    """A mel-like spectrogram (16 bins x 64 frames) with a bright band at the class's bin."""
    b = _bands(g, 16, 64, mels_first=True)
    return {"input_features": b["x"], "labels": b["labels"]}


def ast_bands(g: torch.Generator) -> Batch:
    """The same bands, laid out (frames, bins) as the Audio Spectrogram Transformer takes them."""
    b = _bands(g, 16, 32, mels_first=False)
    return {"input_values": b["x"], "labels": b["labels"]}


def image_captions(g: torch.Generator) -> Batch:
    """Eight images of eight classes (`_quadrant_images`) and their one-token captions."""
    labels = torch.randperm(8, generator=g)
    ids = torch.stack([torch.full((8,), 1), 4 + labels, torch.full((8,), 2)], dim=1)
    return {"input_ids": ids, "pixel_values": _quadrant_images(g, labels), "return_loss": True}


# -- the zoo ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One architecture: how to build it from a small config, its task, and its kind."""

    name: str
    kind: str
    build: Callable[[], nn.Module]
    task: Callable[[torch.Generator], Batch]


def zoo() -> list[Entry]:
    """Every architecture, from small configs (imports transformers)."""
    import transformers as T

    T.logging.set_verbosity_error()
    small: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    enc = dict(small, vocab_size=VOCAB, max_position_embeddings=64, num_labels=3)
    dec = dict(small, vocab_size=VOCAB, max_position_embeddings=64)
    kv = dict(dec, num_key_value_heads=1, head_dim=16)
    moe = dict(kv, num_local_experts=4, num_experts_per_tok=2)
    s2s = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
               pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)  # fmt: skip
    vit = dict(small, image_size=32, patch_size=8, num_labels=3)
    conv = dict(num_labels=3)
    audio = dict(small, num_labels=4, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                 num_feat_extract_layers=2, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                 classifier_proj_size=16)  # fmt: skip

    def e(name: str, kind: str, cls: str, cfg: str, task: Callable[[torch.Generator], Batch], **kw: Any) -> Entry:
        return Entry(name, kind, lambda: getattr(T, cls)(getattr(T, cfg)(**kw)), task)

    text, lm, s2s_task = keyword_text, counting_lm, reversed_pattern
    return [
        # text encoders
        e("BERT", "encoder", "BertForSequenceClassification", "BertConfig", text, **enc),
        e("RoBERTa", "encoder", "RobertaForSequenceClassification", "RobertaConfig", text, **enc),
        e("DistilBERT", "encoder", "DistilBertForSequenceClassification", "DistilBertConfig", text, vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, num_labels=3),
        e("ALBERT", "encoder", "AlbertForSequenceClassification", "AlbertConfig", text, embedding_size=16, **enc),
        e("ELECTRA", "encoder", "ElectraForSequenceClassification", "ElectraConfig", text, embedding_size=16, **enc),
        e("DeBERTa", "encoder", "DebertaForSequenceClassification", "DebertaConfig", text, **enc),
        e("DeBERTa-v2", "encoder", "DebertaV2ForSequenceClassification", "DebertaV2Config", text, **enc),
        e("XLNet", "encoder", "XLNetForSequenceClassification", "XLNetConfig", text, vocab_size=VOCAB, d_model=32, n_layer=2, n_head=2, d_inner=64, num_labels=3),
        e("MPNet", "encoder", "MPNetForSequenceClassification", "MPNetConfig", text, **enc),
        e("ConvBERT", "encoder", "ConvBertForSequenceClassification", "ConvBertConfig", text, embedding_size=32, **enc),
        e("MobileBERT", "encoder", "MobileBertForSequenceClassification", "MobileBertConfig", text, embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=1, **enc),
        e("ModernBERT", "encoder", "ModernBertForSequenceClassification", "ModernBertConfig", text, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, **enc),
        e("Funnel", "encoder", "FunnelForSequenceClassification", "FunnelConfig", text, vocab_size=VOCAB, block_sizes=[1, 1], d_model=32, n_head=2, d_head=16, d_inner=64, num_labels=3),
        # decoders
        e("GPT-2", "decoder", "GPT2LMHeadModel", "GPT2Config", lm, vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=2, n_positions=64),
        e("GPT-Neo", "decoder", "GPTNeoForCausalLM", "GPTNeoConfig", lm, vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, attention_types=[[["global", "local"], 1]], window_size=8, max_position_embeddings=64),
        e("GPT-NeoX", "decoder", "GPTNeoXForCausalLM", "GPTNeoXConfig", lm, **dec),
        e("GPT-J", "decoder", "GPTJForCausalLM", "GPTJConfig", lm, vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, rotary_dim=8, n_positions=64),
        e("OPT", "decoder", "OPTForCausalLM", "OPTConfig", lm, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64),
        e("Llama", "decoder", "LlamaForCausalLM", "LlamaConfig", lm, **kv),
        e("Mistral", "decoder", "MistralForCausalLM", "MistralConfig", lm, **kv),
        e("Qwen2", "decoder", "Qwen2ForCausalLM", "Qwen2Config", lm, **kv),
        e("Qwen3", "decoder", "Qwen3ForCausalLM", "Qwen3Config", lm, **kv),
        e("Phi", "decoder", "PhiForCausalLM", "PhiConfig", lm, **dec),
        e("Phi-3", "decoder", "Phi3ForCausalLM", "Phi3Config", lm, pad_token_id=0, **kv),
        e("Gemma", "decoder", "GemmaForCausalLM", "GemmaConfig", lm, **kv),
        e("Gemma-2", "decoder", "Gemma2ForCausalLM", "Gemma2Config", lm, sliding_window=8, **kv),
        e("Falcon", "decoder", "FalconForCausalLM", "FalconConfig", lm, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
        e("BLOOM", "decoder", "BloomForCausalLM", "BloomConfig", lm, vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=2),
        e("CodeGen", "decoder", "CodeGenForCausalLM", "CodeGenConfig", lm, vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, rotary_dim=8, n_positions=64, n_ctx=64),
        e("StableLM", "decoder", "StableLmForCausalLM", "StableLmConfig", lm, num_key_value_heads=2, **dec),
        e("OLMo-2", "decoder", "Olmo2ForCausalLM", "Olmo2Config", lm, pad_token_id=0, **dec),
        e("Starcoder2", "decoder", "Starcoder2ForCausalLM", "Starcoder2Config", lm, **kv),
        # mixtures of experts
        e("Mixtral", "moe", "MixtralForCausalLM", "MixtralConfig", lm, **moe),
        e("Qwen2-MoE", "moe", "Qwen2MoeForCausalLM", "Qwen2MoeConfig", lm, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, **kv),
        e("OLMoE", "moe", "OlmoeForCausalLM", "OlmoeConfig", lm, num_experts=4, num_experts_per_tok=2, pad_token_id=0, **dec),
        e("Switch", "moe", "SwitchTransformersForConditionalGeneration", "SwitchTransformersConfig", s2s_task, vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, num_experts=4, num_sparse_encoder_layers=1, num_sparse_decoder_layers=1, decoder_start_token_id=1),
        # state-space and recurrent
        e("Mamba", "ssm", "MambaForCausalLM", "MambaConfig", lm, vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4),
        e("Falcon-Mamba", "ssm", "FalconMambaForCausalLM", "FalconMambaConfig", lm, vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4),
        e("RWKV", "ssm", "RwkvForCausalLM", "RwkvConfig", lm, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32, intermediate_size=64, context_length=64),
        e("RecurrentGemma", "ssm", "RecurrentGemmaForCausalLM", "RecurrentGemmaConfig", lm, vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, lru_width=32, attention_window_size=8, block_types=["recurrent", "attention"]),
        # encoder-decoders
        e("T5", "enc-dec", "T5ForConditionalGeneration", "T5Config", s2s_task, vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, decoder_start_token_id=1),
        e("BART", "enc-dec", "BartForConditionalGeneration", "BartConfig", s2s_task, **s2s),
        e("mBART", "enc-dec", "MBartForConditionalGeneration", "MBartConfig", s2s_task, **s2s),
        e("Marian", "enc-dec", "MarianMTModel", "MarianConfig", s2s_task, scale_embedding=True, **s2s),
        e("Pegasus", "enc-dec", "PegasusForConditionalGeneration", "PegasusConfig", s2s_task, scale_embedding=True, **s2s),
        e("BlenderbotSmall", "enc-dec", "BlenderbotSmallForConditionalGeneration", "BlenderbotSmallConfig", s2s_task, **s2s),
        # vision
        e("ViT", "vision", "ViTForImageClassification", "ViTConfig", coloured_squares, **vit),
        e("DeiT", "vision", "DeiTForImageClassification", "DeiTConfig", coloured_squares, **vit),
        e("BEiT", "vision", "BeitForImageClassification", "BeitConfig", coloured_squares, use_mean_pooling=True, **vit),
        e("DINOv2", "vision", "Dinov2ForImageClassification", "Dinov2Config", coloured_squares, **vit),
        e("Swin", "vision", "SwinForImageClassification", "SwinConfig", coloured_squares, image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=3),
        e("ConvNeXt", "vision", "ConvNextForImageClassification", "ConvNextConfig", coloured_squares, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], **conv),
        e("ConvNeXt-v2", "vision", "ConvNextV2ForImageClassification", "ConvNextV2Config", coloured_squares, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], **conv),
        e("MobileNetV1", "vision", "MobileNetV1ForImageClassification", "MobileNetV1Config", coloured_squares, image_size=32, depth_multiplier=0.25, **conv),
        e("MobileNetV2", "vision", "MobileNetV2ForImageClassification", "MobileNetV2Config", coloured_squares, image_size=32, depth_multiplier=0.25, **conv),
        e("ResNet", "vision", "ResNetForImageClassification", "ResNetConfig", coloured_squares, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], **conv),
        e("RegNet", "vision", "RegNetForImageClassification", "RegNetConfig", coloured_squares, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, **conv),
        e("EfficientNet", "vision", "EfficientNetForImageClassification", "EfficientNetConfig", coloured_squares, image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, **conv),
        e("PoolFormer", "vision", "PoolFormerForImageClassification", "PoolFormerConfig", coloured_squares, hidden_sizes=[16, 32], depths=[1, 1], num_encoder_blocks=2, patch_sizes=[4, 2], strides=[4, 2], padding=[1, 0], **conv),
        e("MobileViT", "vision", "MobileViTForImageClassification", "MobileViTConfig", coloured_squares, image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48], **conv),
        e("SegFormer", "vision", "SegformerForImageClassification", "SegformerConfig", coloured_squares, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], **conv),
        # speech
        e("Wav2Vec2", "speech", "Wav2Vec2ForSequenceClassification", "Wav2Vec2Config", tones, **audio),
        e("HuBERT", "speech", "HubertForSequenceClassification", "HubertConfig", tones, **audio),
        e("WavLM", "speech", "WavLMForSequenceClassification", "WavLMConfig", tones, num_buckets=32, max_bucket_distance=64, **audio),
        e("Data2VecAudio", "speech", "Data2VecAudioForSequenceClassification", "Data2VecAudioConfig", tones, **audio),
        e("Whisper", "speech", "WhisperForAudioClassification", "WhisperConfig", whisper_bands, vocab_size=VOCAB, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=32, num_labels=4, classifier_proj_size=16),
        e("AST", "speech", "ASTForAudioClassification", "ASTConfig", ast_bands, num_mel_bins=16, max_length=32, patch_size=8, frequency_stride=8, time_stride=8, num_labels=4, **small),
        # multimodal
        e("CLIP", "multimodal", "CLIPModel", "CLIPConfig", image_captions, text_config=dict(small, vocab_size=VOCAB, max_position_embeddings=16, pad_token_id=0, bos_token_id=1, eos_token_id=2), vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16),
        e("SigLIP", "multimodal", "SiglipModel", "SiglipConfig", image_captions, text_config=dict(small, vocab_size=VOCAB, max_position_embeddings=16), vision_config=dict(small, image_size=32, patch_size=8)),
    ]  # fmt: skip


# -- one model -------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """The global generators a model may draw from: torch's, NumPy's and Python's."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def batch_at(entry: Entry, step: int) -> Batch:
    """The batch of one step: a pure function of the step, so every run sees the same data."""
    return entry.task(torch.Generator().manual_seed(SEED * 100_003 + step))


def train(
    entry: Entry, steps: int, mode: str, repair: Diagnosis | None = None
) -> tuple[list[float], Diagnosis | None, Diagnosis | None]:
    """One training run from the seed; mode is ``plain``, ``inspect+every4``, ``every4`` or ``defaults``.

    Returns the loss of every step, inspect's diagnosis (``inspect+every4`` only) and the
    watcher's (None unwatched). With `repair`, the model `gw.fix` makes from it is trained
    (a ``plain`` run).
    """
    seed_everything(SEED)
    model = entry.build()
    if repair is not None:
        model = gw.fix(model, repair, example_input=batch_at(entry, 0)).model
    model.train()
    pre = gw.inspect(model, batch_at(entry, 0)) if mode == "inspect+every4" else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses: list[float] = []
    watcher = None if mode == "plain" else gw.watch(model) if mode == "defaults" else gw.watch(model, every=4)
    with watcher if watcher is not None else contextlib.nullcontext():
        for step in range(steps):
            loss = model(**batch_at(entry, step)).loss
            opt.zero_grad()
            loss.backward()
            if watcher is not None:
                watcher.step(loss=loss)
            opt.step()
            losses.append(loss.item())
    return losses, pre, watcher.diagnose() if watcher is not None else None


def fell(losses: list[float]) -> bool:
    """Whether the loss fell as a healthy run's does: the last tenth's mean under half the first five's."""
    k = max(len(losses) // 10, 1)
    return bool(np.mean(losses[-k:]) < 0.5 * np.mean(losses[:5]))


def _kinds(d: Diagnosis | None) -> list[str]:
    return [f"{f.kind}:{f.severity}" for f in d.findings] if d is not None else []


@dataclass
class Row:
    """What one model did."""

    name: str
    kind: str
    steps: int
    seconds: float = 0.0
    first: float = math.nan
    last: float = math.nan
    learned: bool = False
    identical: bool = True
    crash: str = ""
    inspect: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    every4: list[str] = field(default_factory=list)
    defaults: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    fixed: str = ""

    @property
    def alarms(self) -> bool:
        """A warning or an error from inspect or either watched run."""
        return any(not s.endswith(":info") for s in self.inspect + self.every4 + self.defaults)


def run_one(entry: Entry, steps: int, repair: bool = False) -> Row:
    """The three runs of one model (four if one is not bit-identical), and what they found;
    with `repair`, a run that did not learn is trained again as `gw.fix` repairs it from the
    diagnosis of the ``every=4`` run."""
    row = Row(entry.name, entry.kind, steps)
    t0 = time.perf_counter()
    try:
        plain, _, _ = train(entry, steps, "plain")
        watched, pre, d4 = train(entry, steps, "inspect+every4")
        default, _, dd = train(entry, steps, "defaults")
    except Exception as exc:  # a crash is this benchmark's finding, not the end of it
        row.crash = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        row.messages.append(traceback.format_exc(limit=-3))
        row.seconds = time.perf_counter() - t0
        return row
    row.seconds = time.perf_counter() - t0
    row.first, row.last = float(np.mean(plain[:5])), float(np.mean(plain[-max(steps // 10, 1):]))
    row.learned = fell(plain)
    row.identical = plain == watched == default
    if plain != watched:  # inspect or the watcher: which one shifted the run?
        alone, _, _ = train(entry, steps, "every4")
        row.messages.append("differs after inspect" if alone == plain else "differs under watch(every=4)")
    if plain != default:
        row.messages.append("differs under watch() at its defaults")
    row.inspect = _kinds(pre)
    row.causes = [str(c.kind) for c in pre.causes] if pre is not None else []
    row.every4, row.defaults = _kinds(d4), _kinds(dd)
    for label, d in (("inspect", pre), ("every=4", d4), ("defaults", dd)):
        for f in d.findings if d is not None else []:
            if f.severity != gw.Severity.INFO:
                ev = ", ".join(f"{k}={v:.3g}" for k, v in list(f.evidence.items())[:6])
                row.messages.append(f"{label}: {f.kind}:{f.severity} {f.layers[:3]} — {f.message} [{ev}]")
    if repair and not row.learned and d4 is not None and not d4.healthy:
        fixed, _, _ = train(entry, steps, "plain", repair=d4)
        k = max(steps // 10, 1)
        row.fixed = f"{np.mean(fixed[:5]):.3f}>{np.mean(fixed[-k:]):.3f} {'fell' if fell(fixed) else 'did NOT fall'}"
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=None, metavar="NAME", help="only these models (repeatable)")
    ap.add_argument("--steps", type=int, default=150, help="training steps per run (default 150)")
    ap.add_argument("--verbose", action="store_true", help="print every warning's message and evidence")
    ap.add_argument("--fix", action="store_true", help="train the runs that did not learn again, as gw.fix repairs them")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    try:
        entries = zoo()
    except ImportError:
        print("transformers is not installed: nothing to run")
        return 0
    if args.only:
        wanted = {n.lower() for n in args.only}
        entries = [x for x in entries if x.name.lower() in wanted]
        if not entries:
            raise SystemExit(f"no model named {args.only}; choose from: {', '.join(x.name for x in zoo())}")
    print(f"{'model':<16} {'kind':<10} {'steps':>5} {'s':>5} {'loss':>13} {'fell':<4} {'same':<4}  inspect | every=4 | defaults")
    rows: list[Row] = []
    t0 = time.perf_counter()
    for entry in entries:
        r = run_one(entry, args.steps, repair=args.fix)
        rows.append(r)
        if r.crash:
            print(f"{r.name:<16} {r.kind:<10} {r.steps:>5} {r.seconds:>5.0f} CRASH {r.crash}")
        else:
            ins = ", ".join(r.inspect + [f"cause {c}" for c in r.causes]) or "-"
            print(
                f"{r.name:<16} {r.kind:<10} {r.steps:>5} {r.seconds:>5.0f} {r.first:>6.3f}>{r.last:<6.3f} "
                f"{'yes' if r.learned else 'NO':<4} {'yes' if r.identical else 'NO':<4}  "
                f"{ins} | {', '.join(r.every4) or '-'} | {', '.join(r.defaults) or '-'}"
            )
        if r.fixed:
            print(f"    after gw.fix: loss {r.fixed}")
        if args.verbose or r.crash or not r.identical:
            for m in r.messages:
                print("    " + m.replace("\n", "\n    "))
    crashes = [r.name for r in rows if r.crash]
    different = [r.name for r in rows if not r.crash and not r.identical]
    alarms = [r.name for r in rows if not r.crash and r.learned and r.alarms]
    stuck = [r.name for r in rows if not r.crash and not r.learned]
    print(f"\n{len(rows)} models, {time.perf_counter() - t0:.0f} s")
    print(f"crashes: {len(crashes)} {crashes or ''}")
    print(f"runs not bit-identical to the unwatched run: {len(different)} {different or ''}")
    print(f"loss fell, yet a warning or error: {len(alarms)} {alarms or ''}")
    print(f"loss did not fall to half: {len(stuck)} {stuck or ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

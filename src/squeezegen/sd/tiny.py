"""A tiny Stable-Diffusion-architecture pipeline built offline, deterministically from a seed.

Same classes and wiring as SD 1.5 (UNet2DConditionModel with cross-attention, an 8× AutoencoderKL
with 4 latent channels, a CLIP text encoder and tokenizer, DPM-Solver++), shrunk so the toy DAG
trains in seconds on a CPU, yet sized so every quantization path is exercised:

- Linear layers whose input width is a multiple of 256 (attention to_k/to_v read the 256-wide
  text states; the transformer feed-forward output layers read 256 features) → Q4_K rows;
- 3×3 convs whose element count is a multiple of 256 but whose row (c_in·9) is not → reshaped
  Q4_K (the comfy.gguf.orig_shape path);
- time embeddings, conv_in/conv_out, norms and biases → kept unquantized by the policy;
- small tensors (≤ 1024 elements) → kept.

Built with random weights; on the toy profile fetch_base then pretrains it on the toy train split
(`sd.pretrain`), so it draws paintings.
"""

from __future__ import annotations

import collections

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from squeezegen.data.captions import tokenizer_corpus

TEXT_WIDTH = 256  # CLIP hidden size = UNet cross_attention_dim (to_k/to_v input width)
MAX_TOKENS = 77  # CLIP context length, as in SD 1.5
MAX_MERGES = 1000  # cap on BPE merges; the fixed caption corpus needs far fewer
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_tiny_pipeline(seed: int) -> StableDiffusionPipeline:
    """A random-weight SD-architecture pipeline; the same seed gives bit-identical weights and tokenizer.

    Draws from its own forked RNG: the caller's global torch RNG state is left untouched.
    """
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,  # latent side at the toy's 64 px
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            attention_head_dim=8,
            norm_num_groups=32,
            cross_attention_dim=TEXT_WIDTH,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,  # 3 downsamplings: 8× like SD
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 32, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=16,
            sample_size=64,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=TEXT_WIDTH,
                intermediate_size=4 * TEXT_WIDTH,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_TOKENS,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,  # SD 1.5's scaled-linear schedule
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tokenizer(corpus: list[str] | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer trained on the fixed caption corpus (captions, with and without a rating),
    with ids identical on every run.

    Merges are learned here rather than with `tokenizers`' trainer because that trainer numbers
    the vocabulary in hash-map order, so ids changed from run to run. The vocabulary is laid
    out like CLIP's own: the 256 byte symbols, the same with the end-of-word mark `</w>`, one
    token per merge in merge order, then the two special tokens. Any text can be tokenized
    (every byte has a token); long prompts are truncated at 77 tokens like SD's.
    """
    corpus = tokenizer_corpus() if corpus is None else corpus
    alphabet = list(bytes_to_unicode().values())  # fixed order: byte 33..126, 161..172, 174..255, then the rest
    words = _byte_level_words(corpus)
    merges = _learn_merges(words, MAX_MERGES)
    vocab_list = alphabet + [a + "</w>" for a in alphabet] + ["".join(pair) for pair in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def _byte_level_words(corpus: list[str]) -> collections.Counter[tuple[str, ...]]:
    """Word counts as CLIP's normalizer + pre-tokenizer split them, each a tuple of symbols ending in `x</w>`."""
    backend = CLIPTokenizer().backend_tokenizer  # the empty CLIP tokenizer carries the pre-processing
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for text in corpus:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            counts[tuple(word[:-1]) + (word[-1] + "</w>",)] += 1
    return counts


def _learn_merges(words: collections.Counter[tuple[str, ...]], max_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties: lexicographically smallest)."""
    merges: list[tuple[str, str]] = []
    words = collections.Counter(words)
    while len(merges) < max_merges:
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: collections.Counter[tuple[str, ...]] = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges

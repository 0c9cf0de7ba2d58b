"""Tiny randomly initialised models of every supported architecture (no download)."""

from __future__ import annotations

import pytest
import torch

VOCAB = 64

#: Gemma-2's attention logit cap in the tiny config: of the order of the tiny model's largest
#: logits, so that the cap visibly bends them.
GEMMA2_CAP = 0.05

ARCHS = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma3_text", "bert")

#: The families added after the first seven, each with its non-default options switched on
#: (docs/math.md §3.17–§3.21); ``llama-<type>`` are Llama with that ``rope_scaling``.
NEW_ARCHS = ("granite", "qwen3", "phi3", "stablelm", "smollm3", "llama-llama3", "llama-linear", "llama-yarn",
             "llama-dynamic", "gptj", "cohere", "olmo2", "gemma2")

#: Llama ``rope_parameters`` of the ``llama-<type>`` configs: each rescales frequencies the
#: tiny prompts (16 tokens) actually use — the original length is 8 where the type has one.
ROPE_SCALING = {
    "llama3": {"rope_type": "llama3", "rope_theta": 100.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
    "linear": {"rope_type": "linear", "rope_theta": 100.0, "factor": 4.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 100.0, "factor": 8.0, "original_max_position_embeddings": 8},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 100.0, "factor": 2.0},
}


def tiny_config(arch: str):
    """A small config exercising the architecture's special features."""
    import transformers as tf

    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25, bos_token_id=0, eos_token_id=0,
        )
    if arch == "llama":  # GQA: 4 query heads, 2 kv heads
        return tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
        )
    if arch == "mistral":  # GQA + sliding window smaller than the prompt
        return tf.MistralConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64, sliding_window=5,
        )
    if arch == "qwen2":  # q/k biases, GQA
        return tf.Qwen2Config(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
        )
    if arch == "gemma3_text":  # QK-norm, query_pre_attn_scalar, local/global RoPE, sliding window
        return tf.Gemma3TextConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, intermediate_size=64, max_position_embeddings=64,
            query_pre_attn_scalar=24, sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000.0},
            },
        )
    if arch == "bert":
        return tf.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64,
        )
    return _new_config(arch)


def _new_config(arch: str):
    """Tiny configs of :data:`NEW_ARCHS` (GQA 4 query / 2 kv heads unless said otherwise)."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    if arch == "granite":  # attention_multiplier instead of 1/sqrt(d_h)
        return tf.GraniteConfig(**common, attention_multiplier=0.8)
    if arch == "qwen3":  # per-head QK RMSNorm (gain w), q/k biases
        return tf.Qwen3Config(**common, head_dim=16, attention_bias=True)
    if arch == "phi3":  # fused qkv_proj, partial rotary
        return tf.Phi3Config(**common, partial_rotary_factor=0.5)
    if arch == "stablelm":  # partial rotary (4 of 16 dims), q/k biases, per-head QK LayerNorm
        return tf.StableLmConfig(**dict(common, num_attention_heads=2, num_key_value_heads=1),
                                 partial_rotary_factor=0.25, use_qkv_bias=True, qk_layernorm=True)
    if arch == "smollm3":  # layer 1 without RoPE (NoPE)
        return tf.SmolLM3Config(**dict(common, num_hidden_layers=3), no_rope_layers=[1, 0, 1], rope_theta=100.0)
    if arch.startswith("llama-"):  # rope_scaling; dynamic holds its frequencies up to 16 tokens
        kind = arch.split("-", 1)[1]
        return tf.LlamaConfig(**dict(common, max_position_embeddings=16 if kind == "dynamic" else 64),
                              rope_parameters=dict(ROPE_SCALING[kind]))
    if arch == "gptj":  # interleaved rotary on the first 4 of 8 dims
        return tf.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64,
                             bos_token_id=0, eos_token_id=0)
    if arch == "cohere":  # interleaved rotary, per-head QK LayerNorm, q/k biases
        return tf.CohereConfig(**common, use_qk_norm=True, attention_bias=True, rope_theta=100.0)
    if arch == "olmo2":  # QK RMSNorm over the whole projection, q/k biases
        return tf.Olmo2Config(**common, attention_bias=True)
    if arch == "gemma2":  # logit soft-cap small enough to bite, sliding window on layer 0
        return tf.Gemma2Config(**common, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
                               attn_logit_softcapping=GEMMA2_CAP, layer_types=["sliding_attention", "full_attention"])
    raise KeyError(arch)


def tiny_model(arch: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    """Seeded random model with eager attention, in ``dtype``; q/k norm and biases randomised."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    cfg = tiny_config(arch)
    model = AutoModel.from_config(cfg, attn_implementation="eager", dtype=dtype).eval()
    with torch.no_grad():  # make biases and norm gains non-trivial so mishandling them shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def tiny_inputs(arch: str, n: int = 12, batch: int = 2, pad: bool = True, seed: int = 1):
    """Token ids (batch, n) and attention mask; the second row is right-padded when ``pad``
    (left padding makes eager attention of causal models produce NaN on padded rows)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, n), generator=g)  # 0 is a pad id (zero embedding)
    mask = torch.ones(batch, n, dtype=torch.long)
    if pad and batch > 1:
        mask[1, n - 3 :] = 0
    return ids, mask


def tiny_problem(arch: str, n: int = 12, batch: int = 2):
    """``(model, heads, capture, pairs)``: a float64 tiny model, its heads, the capture of
    :func:`tiny_inputs` and every query's top-attended pair — the usual decomposition input."""
    from svfcheck.real.capture import capture
    from svfcheck.real.decompose import top_attended_pairs
    from svfcheck.real.heads import extract_heads

    model = tiny_model(arch)
    heads = extract_heads(model)
    ids, mask = tiny_inputs(arch, n=n, batch=batch)
    cap = capture(model, ids, mask, heads=heads)
    return model, heads, cap, top_attended_pairs(cap)


@pytest.fixture(scope="session")
def tiny():
    """Namespace: ``model(arch, dtype, seed)``, ``inputs(arch, ...)``, ``problem(arch, n, batch)``,
    ``config(arch)``, ``ARCHS``."""
    import types

    return types.SimpleNamespace(model=tiny_model, inputs=tiny_inputs, problem=tiny_problem, config=tiny_config,
                                 ARCHS=ARCHS)


@pytest.fixture(scope="session")
def tiny_models():
    """Cache of float64 tiny models by architecture."""
    cache: dict[str, object] = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = tiny_model(arch)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def smollm2_models():
    """``(trained, random_init seed 0)`` SmolLM2-135M, loaded once per session (the SAD
    contrast tests of test_sad.py and test_sad_roles.py share them)."""
    from svfcheck.real.models import load_model

    return (load_model("smollm2-135m", progress=False),
            load_model("smollm2-135m", random_init=True, seed=0, progress=False))

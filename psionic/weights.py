"""Load llama-family weights from a GGUF file or a Hugging Face safetensors folder.

A GGUF is dequantised to fp32 once and cached as safetensors next to its tokenizer and
metadata, under ``cache_root()/<sha256 of the GGUF>/``; later loads read only the cache.
Tensor names are converted to this package's names (see ``model.py``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import Tensor

from psionic.args import LlamaArgs
from psionic.cache import cache_root, file_digest
from psionic.tokenizer import ChatTokenizer, tokenizer_from_gguf

logger = logging.getLogger(__name__)

_GGUF_LAYER_NAMES = {
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_gate": "feed_forward.w1",
    "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3",
    "attn_norm": "attention_norm",
    "ffn_norm": "ffn_norm",
}
_GGUF_TOP_NAMES = {
    "token_embd": "tok_embeddings",
    "output_norm": "norm",
    "output": "output",
}
_HF_LAYER_NAMES = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
_HF_TOP_NAMES = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}
_LAYER_RE = re.compile(r"^(?:blk|model\.layers)\.(\d+)\.(.+)\.weight$")


@dataclass
class LlamaWeights:
    """Everything needed to build a decoder: shape, fp32 tensors, tokenizer."""

    args: LlamaArgs
    state_dict: dict[str, Tensor]
    tokenizer: ChatTokenizer
    name: str


def gguf_metadata(reader: Any) -> dict[str, Any]:
    """All key/value fields of a ``gguf.GGUFReader`` as Python values."""
    return {key: fld.contents() for key, fld in reader.fields.items()}


def _unpermute(w: Tensor, n_heads: int) -> Tensor:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE back to rotate-half)."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _args_from_gguf(meta: dict[str, Any], has_output: bool) -> LlamaArgs:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported (llama only)")
    dim = int(meta["llama.embedding_length"])
    n_heads = int(meta["llama.attention.head_count"])
    vocab = meta.get("llama.vocab_size") or len(meta["tokenizer.ggml.tokens"])
    if meta.get("llama.rope.scaling.type") not in (None, "none"):
        raise ValueError("GGUF uses RoPE scaling, which is not supported")
    return LlamaArgs(
        dim=dim,
        n_layers=int(meta["llama.block_count"]),
        n_heads=n_heads,
        n_kv_heads=int(meta.get("llama.attention.head_count_kv", n_heads)),
        vocab_size=int(vocab),
        ffn_dim=int(meta["llama.feed_forward_length"]),
        norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        max_seq_len=int(meta.get("llama.context_length", 2048)),
        tie_embeddings=not has_output,
    )


def _convert_gguf(path: Path) -> tuple[LlamaArgs, dict[str, Tensor], Tokenizer, dict[str, Any]]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    meta = gguf_metadata(reader)
    names = {t.name for t in reader.tensors}
    args = _args_from_gguf(meta, has_output="output.weight" in names)
    state: dict[str, Tensor] = {}
    for t in reader.tensors:
        array = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32, order="C")
        tensor = torch.from_numpy(array)
        m = _LAYER_RE.match(t.name)
        if m:
            layer, part = m.groups()
            key = f"layers.{layer}.{_GGUF_LAYER_NAMES[part]}.weight"
            if part == "attn_q":
                tensor = _unpermute(tensor, args.n_heads)
            elif part == "attn_k":
                tensor = _unpermute(tensor, args.n_kv_heads)
        else:
            key = _GGUF_TOP_NAMES[t.name.removesuffix(".weight")] + ".weight"
        state[key] = tensor.contiguous()
    info = {
        "name": meta.get("general.name", path.stem),
        "chat_template": meta.get("tokenizer.chat_template", ""),
        "bos_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_id": meta.get("tokenizer.ggml.eos_token_id"),
        "add_bos": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
    }
    return args, state, tokenizer_from_gguf(meta), info


def _stop_ids(tokenizer: Tokenizer, eos: int | list[int] | None) -> frozenset[int]:
    """End-of-turn ids: the declared EOS (one or several) plus the usual chat terminators."""
    ids: set[int] = set()
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(i for i in eos if isinstance(i, int))
    for text in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "</s>"):
        tid = tokenizer.token_to_id(text)
        if tid is not None:
            ids.add(tid)
    return frozenset(ids)


def load_gguf(path: Path, cache: Path | None = None) -> LlamaWeights:
    """Load a llama GGUF, converting it on first use and reading the cache afterwards."""
    digest = file_digest(path)
    folder = (cache or cache_root()) / digest
    weights_file = folder / "model.safetensors"
    if not weights_file.exists():
        started = time.monotonic()
        args, state, tokenizer, info = _convert_gguf(path)
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(folder / "tokenizer.json"))
        meta = {"args": asdict(args), **info}
        (folder / "meta.json").write_text(json.dumps(meta))
        tmp = folder / "model.safetensors.tmp"
        save_file(state, str(tmp))
        tmp.replace(weights_file)
        logger.info("converted %s in %.1fs into %s", path.name, time.monotonic() - started, folder)
    meta = json.loads((folder / "meta.json").read_text())
    args = LlamaArgs(**meta["args"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    chat = ChatTokenizer(
        tokenizer=tokenizer,
        chat_template=meta["chat_template"],
        bos_id=meta["bos_id"],
        stop_ids=_stop_ids(tokenizer, meta["eos_id"]),
        add_bos=meta["add_bos"],
    )
    return LlamaWeights(args, load_file(str(weights_file)), chat, str(meta["name"]))


def from_hf_name(name: str) -> str:
    """A Hugging Face llama tensor name → this package's (unfused) name."""
    m = _LAYER_RE.match(name)
    if m:
        layer, part = m.groups()
        return f"layers.{layer}.{_HF_LAYER_NAMES[part]}.weight"
    return _HF_TOP_NAMES[name.removesuffix(".weight")] + ".weight"


def load_hf_folder(folder: Path) -> LlamaWeights:
    """Load a Hugging Face llama folder: config.json, *.safetensors, tokenizer files."""
    config = json.loads((folder / "config.json").read_text())
    if config.get("rope_scaling"):
        raise ValueError("RoPE scaling is not supported")
    n_heads = int(config["num_attention_heads"])
    args = LlamaArgs(
        dim=int(config["hidden_size"]),
        n_layers=int(config["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
        vocab_size=int(config["vocab_size"]),
        ffn_dim=int(config["intermediate_size"]),
        norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        max_seq_len=int(config.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
    )
    state: dict[str, Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            if "rotary_emb" not in key:
                state[from_hf_name(key)] = value.float()
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok_config_file = folder / "tokenizer_config.json"
    tok_config = json.loads(tok_config_file.read_text()) if tok_config_file.exists() else {}
    bos = config.get("bos_token_id")
    chat = ChatTokenizer(
        tokenizer=tokenizer,
        chat_template=str(tok_config.get("chat_template", "")),
        bos_id=bos if isinstance(bos, int) else None,
        stop_ids=_stop_ids(tokenizer, config.get("eos_token_id")),
    )
    return LlamaWeights(args, state, chat, folder.name)


def to_hf_name(key: str) -> str:
    """This package's (unfused) tensor name → the Hugging Face ``LlamaForCausalLM`` name."""
    parts = key.split(".")
    if parts[0] == "layers":
        inverse_layer = {v: k for k, v in _HF_LAYER_NAMES.items()}
        inner = ".".join(parts[2:-1])
        return f"model.layers.{parts[1]}.{inverse_layer[inner]}.{parts[-1]}"
    inverse_top = {v: k for k, v in _HF_TOP_NAMES.items()}
    return f"{inverse_top[parts[0]]}.{parts[-1]}"


def to_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """This package's tensor names → Hugging Face ``LlamaForCausalLM`` names."""
    return {to_hf_name(key): value for key, value in state.items()}

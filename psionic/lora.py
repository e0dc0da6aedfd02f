"""LoRA adapters for the decoder: attach for training, view for serving, save as PEFT.

A LoRA adapter adds ``scale * B(A(x))`` to a frozen linear layer's output, with ``A`` of shape
(r, in) and ``B`` of shape (out, r) and ``scale = alpha / r``. The decoder fuses q/k/v into
``wqkv`` and gate/up into ``w13`` (psionic/model.py), while an adapter, like PEFT's, has one
A/B pair per unfused projection; the wrapper therefore adds each pair's output to its own
slice of the fused output, which is exactly what PEFT computes on the unfused layers.

``attach_lora`` wraps a model in place for training. ``lora_view`` builds, for serving, a
second model object over the same weight tensors (no copy) with an adapter added, leaving
the base model as it was, whatever its precision (an int8 base linear is simply called).

On disk an adapter is a PEFT directory (``adapter_model.safetensors`` and
``adapter_config.json``, loadable by ``peft.PeftModel.from_pretrained``) plus
``psionic_adapter.json``: which base it belongs to, the spec, and the digest of the weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from psionic.cache import file_digest
from psionic.model import Block, Transformer
from psionic.weights import from_hf_name, to_hf_name

TARGETS = ("q", "k", "v", "o", "mlp", "head")

# Adapter part (module path inside a block, slice name) → the unfused projection it adapts.
_ATTENTION_PARTS = {"q": "wq", "k": "wk", "v": "wv"}
_MLP_PARTS = {"gate": "w1", "up": "w3"}
_UNFUSED = {
    "attention.wqkv.q": "attention.wq",
    "attention.wqkv.k": "attention.wk",
    "attention.wqkv.v": "attention.wv",
    "attention.wo": "attention.wo",
    "feed_forward.w13.gate": "feed_forward.w1",
    "feed_forward.w13.up": "feed_forward.w3",
    "feed_forward.w2": "feed_forward.w2",
    "output": "output",
}
_FUSED = {v: k for k, v in _UNFUSED.items()}
_PEFT_PREFIX = "base_model.model."
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PSIONIC_META = "psionic_adapter.json"


class AdapterError(ValueError):
    """An adapter directory or state that cannot be used: missing, corrupt, or mismatched."""


@dataclass(frozen=True)
class LoraSpec:
    """Rank, scaling, dropout and which projections get an adapter.

    ``targets`` come from ``TARGETS``: q, k, v, o (attention), "mlp" (gate, up and down),
    "head" (the output projection).
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "k", "v", "o")

    def __post_init__(self) -> None:
        unknown = set(self.targets) - set(TARGETS)
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of {TARGETS}")
        if self.r < 1:
            raise ValueError("LoRA rank must be at least 1")

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> LoraSpec:
        raw = json.loads(data) if isinstance(data, str) else dict(data)
        return cls(
            r=int(raw.get("r", 8)),
            alpha=float(raw.get("alpha", 16)),
            dropout=float(raw.get("dropout", 0.0)),
            targets=tuple(raw.get("targets", ("q", "k", "v", "o"))),
        )

    def peft_target_modules(self) -> list[str]:
        """The Hugging Face module names PEFT's ``target_modules`` lists for this spec."""
        names = set()
        for part in _wrapped_parts(self):
            prefix = "" if part == "output" else "layers.0."
            names.add(to_hf_name(f"{prefix}{_UNFUSED[part]}.weight").split(".")[-2])
        return sorted(names)


def _wrapped_parts(spec: LoraSpec) -> list[str]:
    """The adapter parts (keys of ``_UNFUSED``) this spec adapts, in a fixed order."""
    parts = [f"attention.wqkv.{t}" for t in ("q", "k", "v") if t in spec.targets]
    if "o" in spec.targets:
        parts.append("attention.wo")
    if "mlp" in spec.targets:
        parts += ["feed_forward.w13.gate", "feed_forward.w13.up", "feed_forward.w2"]
    if "head" in spec.targets:
        parts.append("output")
    return parts


class LoraPair(nn.Module):
    """One adapter: ``lora_B @ lora_A``, applied to an input as ``B(A(x))``."""

    def __init__(self, in_features: int, out_features: int, r: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.zeros(r, in_features, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B)


class LoraLinear(nn.Module):
    """A frozen base linear (any callable module, int8 included) plus adapters on slices
    of its output: ``slices`` maps an adapter name to its (start, end) output columns."""

    def __init__(
        self,
        base: nn.Module,
        slices: dict[str, tuple[int, int]],
        spec: LoraSpec,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.base = base
        self.in_features = int(cast(Any, base).in_features)
        self.out_features = int(cast(Any, base).out_features)
        self.scale = spec.scale
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.slices = dict(sorted(slices.items(), key=lambda kv: kv[1]))
        for name, (start, end) in self.slices.items():
            self.add_module(name, LoraPair(self.in_features, end - start, spec.r, dtype))

    def pair(self, name: str) -> LoraPair:
        return cast(LoraPair, getattr(self, name))

    def forward(self, x: Tensor) -> Tensor:
        """``base(x)`` plus each adapter's ``scale * B(A(x))`` on its slice.

        The adapters share their input, so their A matrices run as one stacked matmul (one
        pass over ``x`` instead of one per adapter, forward and backward: on CPU these thin
        matmuls cost their reads of ``x``, not their arithmetic). The scale is applied to
        the rank-r intermediate rather than to the wide output, a smaller multiply.
        """
        y = cast(Tensor, self.base(x))
        h = cast(Tensor, self.dropout(x))
        pairs = [self.pair(name) for name in self.slices]
        stacked = pairs[0].lora_A if len(pairs) == 1 else torch.cat([p.lora_A for p in pairs])
        low = F.linear(h, stacked) * self.scale
        ranks = [int(p.lora_A.shape[0]) for p in pairs]
        pieces: list[Tensor] = []
        pos = 0
        for pair, z, (start, end) in zip(
            pairs, torch.split(low, ranks, dim=-1), self.slices.values(), strict=True
        ):
            if start > pos:
                pieces.append(h.new_zeros(*h.shape[:-1], start - pos))
            pieces.append(F.linear(z, pair.lora_B))
            pos = end
        if pos < self.out_features:
            pieces.append(h.new_zeros(*h.shape[:-1], self.out_features - pos))
        delta = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        return y + delta.to(y.dtype)


# A whole-output adapter's slice name; its parameters are then "<module>.lora.lora_A".
_WHOLE = "lora"


def _wrap_targets(model: Transformer, spec: LoraSpec, dtype: torch.dtype) -> list[LoraLinear]:
    """Replace every target linear under ``model`` by a ``LoraLinear`` (B = 0, A = 0)."""
    args = model.args
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    qkv_slices = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}
    mlp_slices = {"gate": (0, args.ffn_dim), "up": (args.ffn_dim, 2 * args.ffn_dim)}
    wrapped: list[LoraLinear] = []

    def wrap(parent: nn.Module, attr: str, slices: dict[str, tuple[int, int]]) -> None:
        module = LoraLinear(getattr(parent, attr), slices, spec, dtype)
        setattr(parent, attr, module)
        wrapped.append(module)

    for layer in model.layers:
        block = cast(Block, layer)
        attention, feed_forward = block.attention, block.feed_forward
        qkv = {t: s for t, s in qkv_slices.items() if t in spec.targets}
        if qkv:
            wrap(attention, "wqkv", qkv)
        if "o" in spec.targets:
            wrap(attention, "wo", {_WHOLE: (0, args.dim)})
        if "mlp" in spec.targets:
            wrap(feed_forward, "w13", mlp_slices)
            wrap(feed_forward, "w2", {_WHOLE: (0, args.dim)})
    if "head" in spec.targets:
        wrap(model, "output", {_WHOLE: (0, args.vocab_size)})
    return wrapped


def _activation_dtype(model: Transformer) -> torch.dtype:
    return model.tok_embeddings.weight.dtype


def attach_lora(model: Transformer, spec: LoraSpec, *, seed: int) -> None:
    """Wrap ``model``'s target projections with trainable adapters, in place; freeze the rest.

    Initialised as PEFT does: A Kaiming-uniform (from a generator seeded with ``seed``, so
    two runs start identical), B zero, so the adapted model starts equal to the base.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    device = model.tok_embeddings.weight.device
    generator = torch.Generator().manual_seed(seed)
    for module in _wrap_targets(model, spec, torch.float32):
        for name in module.slices:
            pair = module.pair(name)
            nn.init.kaiming_uniform_(pair.lora_A, a=math.sqrt(5), generator=generator)
            pair.to(device=device, dtype=_activation_dtype(model))


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors under psionic names, e.g. ``layers.3.attention.wqkv.q.lora_A``
    or ``layers.3.attention.wo.lora.lora_B``, detached (they share the parameters' memory)."""
    state: dict[str, Tensor] = {}
    for path, module in model.named_modules():
        if isinstance(module, LoraLinear):
            for name in module.slices:
                pair = module.pair(name)
                state[f"{path}.{name}.lora_A"] = pair.lora_A.detach()
                state[f"{path}.{name}.lora_B"] = pair.lora_B.detach()
    return state


def load_adapter_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` into the adapters of ``model``; names and shapes must match exactly."""
    own = adapter_state(model)
    if set(own) != set(state):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise AdapterError(
            f"adapter does not fit the model: missing {missing[:3]}, extra {extra[:3]}"
        )
    with torch.no_grad():
        for key, tensor in own.items():
            if tuple(tensor.shape) != tuple(state[key].shape):
                raise AdapterError(
                    f"{key}: shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
                )
            tensor.copy_(state[key])


def _share(module: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the same tensors: replacing
    a submodule of the copy leaves the original untouched, and no weight is duplicated."""
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = {name: None if m is None else _share(m) for name, m in module._modules.items()}
    return new


def lora_view(base: Transformer, spec: LoraSpec, state: Mapping[str, Tensor]) -> Transformer:
    """A model serving ``base`` plus the adapter ``state``, unmerged, sharing the base's weights.

    The adapter runs in the base's activation dtype, on its device; the base model object is
    not modified (the view has its own module tree over the same tensors).
    """
    view = cast(Transformer, _share(base))
    dtype, device = _activation_dtype(base), base.tok_embeddings.weight.device
    for module in _wrap_targets(view, spec, dtype):
        for name in module.slices:
            module.pair(name).to(device=device).requires_grad_(False)
    load_adapter_state(view, state)
    return view


def _peft_key(key: str) -> str:
    """``layers.3.attention.wqkv.q.lora_A`` →
    ``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight``."""
    module, _, leaf = key.rpartition(".")
    parts = module.split(".")
    if parts[-1] == _WHOLE:
        parts = parts[:-1]
    if parts[0] == "layers":
        part = _UNFUSED[".".join(parts[2:])]
        base = to_hf_name(f"layers.{parts[1]}.{part}.weight")
    else:
        base = to_hf_name(f"{_UNFUSED['.'.join(parts)]}.weight")
    return f"{_PEFT_PREFIX}{base.removesuffix('.weight')}.{leaf}.weight"


def _psionic_key(peft_key: str) -> str:
    """The inverse of ``_peft_key``."""
    if not peft_key.startswith(_PEFT_PREFIX) or not peft_key.endswith(".weight"):
        raise AdapterError(f"not a PEFT LoRA tensor name: {peft_key}")
    module, _, leaf = peft_key.removeprefix(_PEFT_PREFIX).removesuffix(".weight").rpartition(".")
    name = from_hf_name(f"{module}.weight").removesuffix(".weight")
    parts = name.split(".")
    if parts[0] == "layers":
        fused = _FUSED[".".join(parts[2:])]
        prefix = f"layers.{parts[1]}."
    else:
        fused, prefix = _FUSED[name], ""
    whole = "" if fused.split(".")[-1] in (*_ATTENTION_PARTS, *_MLP_PARTS) else f".{_WHOLE}"
    return f"{prefix}{fused}{whole}.{leaf}"


def base_weights_digest(path: Path) -> str:
    """The digest naming a base model's weights: a GGUF's sha256 (psionic/weights.py keys its
    conversion cache by it), or for a Hugging Face folder the sha256 of its safetensors
    files' digests in name order."""
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        h.update(f"{file.name}:{file_digest(file)}\n".encode())
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_adapter_dir(
    path: Path,
    model_or_state: nn.Module | Mapping[str, Tensor],
    spec: LoraSpec,
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """Write the adapter as a PEFT directory at ``path``, atomically, and return its
    psionic_adapter.json (``meta`` gives base_model, base_digest, job, step).

    Written into a temporary sibling, fsynced, then renamed over ``path``: a reader never
    sees a half-written adapter.
    """
    state = (
        adapter_state(model_or_state) if isinstance(model_or_state, nn.Module) else model_or_state
    )
    tensors = {
        _peft_key(k): v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / PEFT_WEIGHTS))
        with (tmp / PEFT_WEIGHTS).open("rb") as f:
            os.fsync(f.fileno())
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": meta.get("base_model"),
            "r": spec.r,
            "lora_alpha": spec.alpha,
            "lora_dropout": spec.dropout,
            "target_modules": spec.peft_target_modules(),
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "use_rslora": False,
            "use_dora": False,
            "init_lora_weights": True,
            "modules_to_save": None,
        }
        write_synced(tmp / PEFT_CONFIG, json.dumps(config, indent=2).encode())
        info = {
            "base_model": meta.get("base_model"),
            "base_digest": meta.get("base_digest"),
            "spec": spec.to_json(),
            "adapter_digest": file_digest(tmp / PEFT_WEIGHTS),
            "job": meta.get("job"),
            "step": int(meta.get("step", 0)),
        }
        write_synced(tmp / PSIONIC_META, json.dumps(info, indent=2).encode())
        fsync_dir(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _spec_from_peft(config: Mapping[str, Any]) -> LoraSpec:
    modules = set(config.get("target_modules") or [])
    targets = [
        t
        for t, m in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj"))
        if m in modules
    ]
    if modules & {"gate_proj", "up_proj", "down_proj"}:
        targets.append("mlp")
    if "lm_head" in modules:
        targets.append("head")
    return LoraSpec(
        r=int(config["r"]),
        alpha=float(config.get("lora_alpha", config["r"])),
        dropout=float(config.get("lora_dropout", 0.0)),
        targets=tuple(targets),
    )


def read_adapter_dir(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read an adapter directory: (psionic_adapter.json, state under psionic names).

    The weights' sha256 must equal the recorded ``adapter_digest`` (AdapterError otherwise).
    A plain PEFT directory without psionic_adapter.json is read too: its meta is built from
    adapter_config.json, with ``base_digest`` None (nothing to check it against).
    """
    weights = path / PEFT_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"{path}: no {PEFT_WEIGHTS}")
    digest = file_digest(weights)
    if (path / PSIONIC_META).is_file():
        meta: dict[str, Any] = json.loads((path / PSIONIC_META).read_text())
        if meta.get("adapter_digest") != digest:
            raise AdapterError(
                f"{path}: adapter digest mismatch: {PEFT_WEIGHTS} has sha256 {digest}, "
                f"{PSIONIC_META} records {meta.get('adapter_digest')}"
            )
        LoraSpec.from_json(meta["spec"])
    elif (path / PEFT_CONFIG).is_file():
        config = json.loads((path / PEFT_CONFIG).read_text())
        if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("use_rslora"):
            raise AdapterError(f"{path}: only plain LoRA adapters are supported")
        meta = {
            "base_model": config.get("base_model_name_or_path"),
            "base_digest": None,
            "spec": _spec_from_peft(config).to_json(),
            "adapter_digest": digest,
            "job": None,
            "step": 0,
        }
    else:
        raise AdapterError(f"{path}: neither {PSIONIC_META} nor {PEFT_CONFIG}")
    try:
        state = {_psionic_key(k): v for k, v in load_file(str(weights)).items()}
    except KeyError as exc:
        raise AdapterError(f"{path}: unexpected tensor {exc}") from exc
    return meta, state

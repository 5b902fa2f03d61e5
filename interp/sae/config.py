"""What a training run is: one dataclass, checked once, saved next to the SAE and in every checkpoint.

Architectures are sae-lens's own (`relu` is sae-lens's "standard": ReLU with an L1 penalty weighted by
decoder norms). A run with `hook_out` trains a transcoder (Dunefsky et al. 2024) from `hook` to
`hook_out` instead of an autoencoder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from interp.errors import InterpError, check_finite

ARCHS = ("relu", "topk", "batchtopk", "jumprelu")
SAE_LENS_ARCH = {"relu": "standard", "topk": "topk", "batchtopk": "batchtopk", "jumprelu": "jumprelu"}
K_ARCHS = ("topk", "batchtopk")  # architectures that keep k latents active
# fields a resumed run may change without changing what it computes
RESUME_FREE = ("checkpoint_every", "progress", "device")
# fields every member of one run shares: they decide the activation stream and the step schedule
SHARED = ("model", "dtype", "corpus", "tokens", "batch_tokens", "lm_batch_size", "seq_len", "skip_positions", "buffer_tokens",
          "mix_fraction", "norm_tokens", "checkpoint_every", "device", "progress")
LAYER = "{l}"  # stands for the layer in hook templates: blocks.{l}.ln2.hook_normalized


@dataclasses.dataclass
class TrainConfig:
    """Everything that decides what a training run computes (and so what `--resume` must match)."""

    hook: str
    arch: str = "topk"
    hook_out: str | None = None  # set: a transcoder from `hook` to `hook_out`
    k: int = 32  # active latents per token (topk) or on average (batchtopk)
    width: int | None = None  # number of latents; default expansion x d_in
    expansion: float = 8.0
    tokens: int = 2_000_000  # training tokens, all processes together
    corpus: str | None = None  # None: the built-in corpus
    model: str = "smollm2-135m"
    dtype: str = "float32"  # the model's (its activations'); the SAE and its training are float32 whatever it is
    batch_tokens: int = 1024  # tokens per optimizer step, all processes together
    lm_batch_size: int = 16  # sequences per model forward pass
    seq_len: int = 128
    skip_positions: int = 1  # leading positions left out: position 0 carries massive activations
    outlier_ratio: float = 10.0  # tokens with a norm above this x the median are left out (0: keep all)
    lr: float = 4e-3  # best of 1e-3 and 4e-3 on the default model at 128 steps; topk tolerates it
    warmup_fraction: float = 0.02  # linear warm-up over this share of the steps
    decay_fraction: float = 0.2  # linear decay to 0 over the last share of the steps
    sparsity_coefficient: float | None = None  # L1 (relu) or L0 (jumprelu) coefficient; default per arch
    sparsity_warmup_fraction: float = 0.05
    aux_k_coefficient: float = 1 / 32  # AuxK loss on dead latents (Gao et al. 2024)
    # a latent that has not fired for this many tokens is dead, and AuxK trains it. Short, so that AuxK works
    # from the start: on the default model half of a transcoder's latents never win the top k in the first
    # 10k tokens, and a 200k window left 40% silent until a mass revival at 200k (held-out EV 0.04 at layer 15)
    dead_window_tokens: int = 10_000
    buffer_tokens: int = 32_768  # mixing buffer, per process
    mix_fraction: float = 0.5  # share of the buffer kept back to mix with fresh activations
    norm_tokens: int = 8192  # tokens used to estimate the normalization factor
    checkpoint_every: int = 100_000  # tokens between checkpoints (0: none)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        self.check()

    @property
    def is_transcoder(self) -> bool:
        return self.hook_out is not None

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_tokens)

    def coefficient(self) -> float:
        """The sparsity coefficient actually used (sae-lens scale, normalized activations)."""
        if self.sparsity_coefficient is not None:
            return self.sparsity_coefficient
        return {"relu": 5.0, "jumprelu": 0.5}.get(self.arch, 0.0)

    def d_sae(self, d_in: int) -> int:
        """Number of latents for `d_in`-wide inputs; raises when it leaves no room for `k` active ones."""
        d_sae = self.width if self.width is not None else int(round(self.expansion * d_in))
        if d_sae < 1 or (self.arch in K_ARCHS and self.k > d_sae):
            raise InterpError(f"{d_sae} latents cannot hold k={self.k} active ones; lower --k or raise "
                              "--width / --expansion")
        return d_sae

    def check(self) -> TrainConfig:
        """Raise a one-line InterpError for settings that cannot work; return self."""
        for name, hook in (("--hook", self.hook), ("--hook-out", self.hook_out)):
            if hook is not None and LAYER in hook:
                raise InterpError(f"{name} {hook!r} is a template; pass --layers (e.g. --layers all) to train one per layer")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise InterpError(f"unknown model dtype {self.dtype!r}; use float32, bfloat16 or float16")
        if self.arch not in ARCHS:
            raise InterpError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.hook_out is not None and self.hook_out == self.hook:
            raise InterpError("--hook-out equals --hook; a transcoder maps one hook to another (or drop --hook-out)")
        if self.hook_out is not None and not re.search(r"hook_mlp_out$", self.hook_out):
            raise InterpError(f"transcoder target {self.hook_out!r} is not an MLP output; use blocks.L.hook_mlp_out")
        positive = {"tokens": self.tokens, "batch_tokens": self.batch_tokens, "k": self.k,
                    "lm_batch_size": self.lm_batch_size, "buffer_tokens": self.buffer_tokens, "lr": self.lr,
                    "expansion": self.expansion, "norm_tokens": self.norm_tokens,
                    "dead_window_tokens": self.dead_window_tokens}
        for name, value in positive.items():
            check_finite(f"--{name.replace('_', '-')}", value, above=0)
        non_negative = {"sparsity_coefficient": self.coefficient(), "aux_k_coefficient": self.aux_k_coefficient,
                        "checkpoint_every": self.checkpoint_every, "outlier_ratio": self.outlier_ratio}
        for name, value in non_negative.items():
            check_finite(f"--{name.replace('_', '-')}", value, at_least=0)
        for name in ("warmup_fraction", "decay_fraction", "sparsity_warmup_fraction"):
            if not 0 <= check_finite(name, getattr(self, name)) <= 1:
                raise InterpError(f"{name} must be in [0, 1] (got {getattr(self, name)})")
        if self.width is not None and self.width < 1:
            raise InterpError(f"--width must be positive (got {self.width})")
        if self.width is not None:
            self.d_sae(self.width)  # k against the width; train() checks it again once d_in is known
        if not 0 <= self.skip_positions < self.seq_len - 1:
            raise InterpError(f"skip_positions must be in [0, {self.seq_len - 1}) (got {self.skip_positions})")
        if not (self.outlier_ratio == 0 or self.outlier_ratio > 1):
            raise InterpError(f"--outlier-ratio must be above 1, or 0 to keep every token (got {self.outlier_ratio})")
        if self.buffer_tokens < self.batch_tokens:
            raise InterpError(f"buffer ({self.buffer_tokens} tokens) is smaller than a batch ({self.batch_tokens}); raise --buffer-tokens")
        if not 0 <= self.mix_fraction < 1:
            raise InterpError(f"mix fraction must be in [0, 1) (got {self.mix_fraction})")
        if self.warmup_fraction + self.decay_fraction > 1:
            raise InterpError("warm-up and decay fractions add up to more than 1; lower one of them")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of fields that change what a run computes, where self and other differ."""
        a, b = self.to_dict(), other.to_dict()
        return sorted(k for k in a if k not in RESUME_FREE and a[k] != b[k])


def check_template(hook: str, hook_out: str | None) -> None:
    """Raise unless `hook` (and `hook_out`, when given) holds `{l}`, as one-per-layer training needs."""
    if LAYER not in hook or (hook_out is not None and LAYER not in hook_out):
        where = "--hook and --hook-out" if hook_out is not None else "--hook"
        raise InterpError(f"--layers needs {LAYER} in {where} (e.g. 'blocks.{LAYER}.ln2.hook_normalized'); "
                          "drop --layers to train one SAE")


def layer_configs(layers: Sequence[int], **fields: Any) -> dict[str, TrainConfig]:
    """One member per layer, named `layer-03`...: `{l}` in `hook` (and `hook_out`, when given) becomes the layer.

    `fields` are TrainConfig fields, with hook templates such as hook="blocks.{l}.ln2.hook_normalized".
    """
    hook, hook_out = fields.get("hook", ""), fields.get("hook_out")
    check_template(hook, hook_out)
    if not layers:
        raise InterpError("--layers names no layer; write 'all', '5', '3,7' or '4-8'")
    members = {}
    for layer in dict.fromkeys(layers):
        hooks = {"hook": hook.replace(LAYER, str(layer))}
        if hook_out is not None:
            hooks["hook_out"] = hook_out.replace(LAYER, str(layer))
        members[f"layer-{layer:02d}"] = TrainConfig(**{**fields, **hooks})
    return members


def sweep_configs(k: Sequence[int] = (), expansion: Sequence[float] = (), **fields: Any) -> dict[str, TrainConfig]:
    """Members on one hook, one per value of `k` and of `expansion` (every pair when both have values):
    named `k-16`, `expansion-4`, `k-16-expansion-4`."""
    ks = list(dict.fromkeys(k)) or [None]
    expansions = list(dict.fromkeys(expansion)) or [None]
    members = {}
    for k_value in ks:
        for x in expansions:
            parts = ([f"k-{k_value}"] if k_value is not None else []) + ([f"expansion-{x:g}"] if x is not None else [])
            values = ({"k": k_value} if k_value is not None else {}) | ({"expansion": x} if x is not None else {})
            members["-".join(parts)] = TrainConfig(**{**fields, **values})
    return members


def check_members(members: dict[str, TrainConfig]) -> None:
    """Raise unless the members can share one activation stream: same `SHARED` fields, distinct names."""
    if not members:
        raise InterpError("no SAE to train; give a hook")
    first_name, first = next(iter(members.items()))
    for name, cfg in members.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise InterpError(f"member name {name!r} is not a plain folder name; use letters, digits, '-', '_', '.'")
        differ = [f for f in SHARED if getattr(cfg, f) != getattr(first, f)]
        if differ:
            raise InterpError(f"members {first_name} and {name} differ in {', '.join(differ)}; "
                              "members of one run share the data stream and step schedule")

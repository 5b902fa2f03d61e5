"""A model summary: sizes, parameter count and every hook name."""

from __future__ import annotations

import dataclasses

import pandas as pd

from interp.results import Result, register_result


@register_result
@dataclasses.dataclass
class ModelInfo(Result):
    kind = "info"
    model: str
    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    n_params: int
    n_hooks: int
    # "hooked-transformer" or "transformer-bridge": which TransformerLens class wraps the model (results saved
    # before it was recorded read as the only loader there was)
    loader: str = "hooked-transformer"
    hooks: list[str] = dataclasses.field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        rows = {k: v for k, v in dataclasses.asdict(self).items() if k != "hooks"}
        return pd.DataFrame({"value": rows})

    def figure(self):
        import plotly.graph_objects as go

        from interp.plotting import escape_label

        sizes = {k: getattr(self, k) for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp")}
        return go.Figure(go.Bar(x=list(sizes), y=list(sizes.values())),
                         layout_title_text=escape_label(f"shape of {self.model}"))

    def summary(self) -> str:
        return "\n".join([self.to_frame().to_string(header=False), *self.hooks])


def model_info(model, hooks: bool = False) -> ModelInfo:
    """Summary of `model`; `hooks=True` also lists every hook name."""
    cfg = model.cfg
    return ModelInfo(
        model=getattr(cfg, "spec", cfg.model_name),
        architecture=str(cfg.original_architecture),
        loader=model.loader,
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_key_value_heads or cfg.n_heads,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        d_vocab=cfg.d_vocab,
        n_ctx=cfg.n_ctx,
        n_params=sum(p.numel() for p in model.parameters()),
        n_hooks=len(model.hook_dict),
        hooks=list(model.hook_dict) if hooks else [],
    )

"""LLM-Microscope (Razzhigaev et al. 2025): token-level nonlinearity, context memory, intrinsic dimension and
the logit lens of a text, and the paper's comparison of punctuation, articles and stopwords with content words.

    from interp.microscope import microscope
    result = microscope(model, "The cat sat on the mat.")      # one text
    result = microscope(model, corpus="python-docs")           # the built-in corpus: classes and removal test

Every run reads a reference sample from the corpus (the built-in one's prose passages unless `corpus` names
another): the first `reference_tokens` tokens, packed into rows of `seq_len`. On it, per layer, it fits the
linear map behind the nonlinearity scores (`interp.microscope.measures`), estimates the intrinsic dimension and
trains the context-memory read-out (`interp.microscope.memory`); the analysed tokens (the text, or the next
`corpus_tokens` corpus tokens) are scored out of sample. Position 0 of every row (the attention sink, whose
norm is ~100x the others' in SmolLM2) is left out of the fits and of the class means.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import torch

from interp.errors import InterpError
from interp.microscope.measures import fit_linear, two_nn_dimension
from interp.microscope.memory import MemoryConfig, context_scores, train_context_head
from interp.microscope.removal import removal_effects
from interp.microscope.words import CLASSES, is_prose, token_class
from interp.results import Result, register_result

SHOWN_TOKENS = 128  # tokens drawn in the figure's per-token panels


@dataclasses.dataclass(kw_only=True)
class MicroscopeConfig:
    """Sizes of one microscope run; `memory` holds the context read-out's training settings."""

    reference_tokens: int = 4096
    corpus_tokens: int = 2048
    seq_len: int = 128
    id_points: int = 2048
    id_fraction: float = 0.2
    max_tokens: int = 512
    removal: bool = True
    memory: MemoryConfig = dataclasses.field(default_factory=MemoryConfig)

    def __post_init__(self) -> None:
        for name in ("reference_tokens", "corpus_tokens", "seq_len", "id_points", "max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 2:
                raise InterpError(f"{name} must be a whole number of at least 2 (got {value!r})")
        if self.reference_tokens < self.seq_len:
            raise InterpError(f"reference_tokens ({self.reference_tokens}) must be at least seq_len ({self.seq_len})")
        if not 0 < self.id_fraction <= 1:
            raise InterpError(f"id_fraction must be in (0, 1] (got {self.id_fraction!r})")


@register_result
@dataclasses.dataclass
class MicroscopeResult(Result):
    """Per token and layer nonlinearity, per token context memory, per layer linearity and intrinsic dimension,
    the logit lens of the text, per class means and (corpus runs) the removal test.

    `layers` labels the L+1 hidden states ("embed", then each block's output); layer l's transformation maps
    hidden state l to l+1, so `nonlinearity` is [L, T] and `linearity` [L] (on the reference tokens).
    """

    kind = "microscope"
    model: str
    source: str
    corpus: str
    tokens: list[str]  # [T] the analysed tokens (a corpus run's rows one after another)
    positions: list[int]  # [T] position in its row
    token_classes: list[str]  # [T]
    layers: list[str]  # [L+1]
    nonlinearity: torch.Tensor  # [L, T]
    linearity: torch.Tensor  # [L]
    intrinsic_dim: torch.Tensor  # [L+1]
    context_loss: torch.Tensor  # [T], NaN at position 0
    context_acc: torch.Tensor  # [T]
    pool_weights: torch.Tensor  # [L+1] the read-out's learned weights over layers
    memory_settings: dict
    reference_tokens: int
    memory_nonlinearity_corr: float  # Spearman, over tokens past position 0
    classes: pd.DataFrame
    removal: pd.DataFrame
    lens_tokens: list[str]
    lens_top: list[list[str]]  # [L+1][T'] the logit lens's top token per layer and position
    lens_probs: torch.Tensor  # [L+1, T']

    def to_frame(self) -> pd.DataFrame:
        """One row per analysed token: its class, context memory and mean nonlinearity over layers."""
        return pd.DataFrame({
            "position": self.positions, "token": self.tokens, "class": self.token_classes,
            "context_loss": self.context_loss.tolist(), "context_acc": self.context_acc.tolist(),
            "nonlinearity": self.nonlinearity.mean(0).tolist(),
        })

    def layer_frame(self) -> pd.DataFrame:
        """One row per hidden state: linearity of the layer that produced it, intrinsic dimension, pooling weight."""
        return pd.DataFrame({"layer": self.layers, "linearity": [math.nan, *self.linearity.tolist()],
                             "intrinsic_dim": self.intrinsic_dim.tolist(), "pool_weight": self.pool_weights.tolist()})

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label, token_labels

        shown = slice(0, min(SHOWN_TOKENS, len(self.tokens)))
        labels = token_labels(self.tokens[shown])
        grid = self.nonlinearity[:, shown]
        top = float(grid[:, 1:].quantile(0.99)) if grid.shape[1] > 1 else None  # position 0 (the sink) is off-scale
        fig = make_subplots(rows=3, cols=2, specs=[[{"colspan": 2}, None], [{}, {}], [{"colspan": 2}, None]],
                            subplot_titles=("nonlinearity per layer and token", "linearity and intrinsic dimension",
                                            "context loss per class (lower: more context)",
                                            "context loss per token (lower: more context)"),
                            vertical_spacing=0.09)
        fig.add_trace(go.Heatmap(z=grid.tolist(), x=labels, y=self.layers[1:], zmin=0, zmax=top,
                                 colorscale="Viridis", colorbar={"len": 0.3, "y": 0.85},
                                 hovertemplate="layer %{y}<br>%{x}<br>nonlinearity %{z:.3f}<extra></extra>"), 1, 1)
        layers = [escape_label(x) for x in self.layers]
        fig.add_trace(go.Scatter(x=layers[1:], y=self.linearity.tolist(), name="linearity"), 2, 1)
        scaled = self.intrinsic_dim / self.intrinsic_dim.nan_to_num().max().clamp_min(1e-9)
        fig.add_trace(go.Scatter(x=layers, y=scaled.tolist(), name="intrinsic dim / max",
                                 customdata=self.intrinsic_dim.tolist(),
                                 hovertemplate="%{x}: %{customdata:.1f}<extra>intrinsic dim</extra>"), 2, 1)
        frame = self.classes
        fig.add_trace(go.Bar(x=frame["class"].tolist(), y=frame["context_loss"].tolist(), name="context loss",
                             text=[f"n={n}" for n in frame["count"]]), 2, 2)
        colors = {name: i for i, name in enumerate(CLASSES)}
        fig.add_trace(go.Bar(x=labels, y=self.context_loss[shown].tolist(), name="token",
                             marker={"color": [colors[c] for c in self.token_classes[shown]], "colorscale": "Turbo",
                                     "cmin": 0, "cmax": len(CLASSES) - 1},
                             customdata=self.token_classes[shown],
                             hovertemplate="%{x} (%{customdata})<br>loss %{y:.3f}<extra></extra>"), 3, 1)
        fig.update_layout(title=escape_label(f"LLM-Microscope: {self.source}"), height=1000, showlegend=False)
        return fig

    def summary(self) -> str:
        lines = [f"LLM-Microscope on {self.source} ({len(self.tokens)} tokens; reference: {self.reference_tokens} "
                 f"tokens of {self.corpus})", self.layer_frame().to_string(index=False, float_format="%.3f"),
                 "per class (tokens past position 0):", self.classes.to_string(index=False, float_format="%.3f"),
                 f"Spearman(context loss, mean nonlinearity) = {self.memory_nonlinearity_corr:.3f}"]
        if len(self.removal):
            lines += ["perplexity when a class is deleted (control: as many random content tokens):",
                      self.removal.to_string(index=False, float_format="%.3f")]
        return "\n".join(lines)


def hidden_states(model, rows: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """The residual stream before every block and after the last: rows [R, S] -> [L+1, R, S, d] (float32, CPU)."""
    from interp.hooks import resid_post, resid_pre

    L = model.cfg.n_layers
    names = [resid_pre(layer) for layer in range(L)] + [resid_post(L - 1)]
    wanted = set(names)
    parts = []
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            _, cache = model.run_with_cache(rows[start:start + batch].to(model.cfg.device),
                                            names_filter=lambda n: n in wanted)
            parts.append(torch.stack([cache[n].float().cpu() for n in names]))
            del cache
    return torch.cat(parts, dim=1)


def prepare_corpus(spec):
    """The corpus to read (`interp.corpus.load_corpus(spec)`); the built-in one keeps only its prose passages
    (`interp.microscope.words.is_prose`), since the paper's word classes are about natural text."""
    from interp.corpus import BUILTIN, Corpus, load_corpus

    corpus = load_corpus(spec)
    if spec is None or str(spec) in (BUILTIN, "builtin"):
        return Corpus(f"{corpus.name} prose", lambda: (d for d in corpus if is_prose(d)), corpus.source)
    return corpus


def corpus_rows(model, corpus, count: int, seq_len: int) -> torch.Tensor:
    """The corpus's first `count` rows of `seq_len` tokens; an error naming the shortfall when it has fewer."""
    from interp.corpus import token_batches

    rows = torch.cat(list(token_batches(model, corpus, batch_size=64, seq_len=seq_len, max_tokens=count * seq_len)))
    if len(rows) < count:
        raise InterpError(f"corpus {corpus.name!r} gives {len(rows)} rows of {seq_len} tokens but the run needs "
                          f"{count}; give it more text or lower --reference-tokens / --corpus-tokens")
    return rows


def text_tokens(model, text: str, max_tokens: int) -> torch.Tensor:
    """Token ids [T] of `text`, refused when there are fewer than two (context memory needs a prefix) or more
    than `max_tokens`."""
    from interp.tokens import encode

    tokens = encode(model, text)[0].cpu()
    if len(tokens) < 2:
        raise InterpError("the text is one token; context memory needs a prefix, so pass at least two tokens")
    if len(tokens) > max_tokens:
        raise InterpError(f"the text has {len(tokens)} tokens, more than --max-tokens {max_tokens}; raise it or "
                          "analyse the file with --corpus FILE")
    return tokens


def class_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per token class: count, mean context loss and accuracy, mean nonlinearity (tokens past position 0)."""
    body = frame[frame["position"] > 0]
    table = body.groupby("class").agg(count=("token", "size"), context_loss=("context_loss", "mean"),
                                      context_acc=("context_acc", "mean"), nonlinearity=("nonlinearity", "mean"))
    return table.reindex([c for c in CLASSES if c in table.index]).reset_index()


@torch.no_grad()
def microscope(model, text: str | None = None, *, corpus=None, source: str | None = None,
               config: MicroscopeConfig | None = None) -> MicroscopeResult:
    """Run every LLM-Microscope measure on `text`, or (text None) on `config.corpus_tokens` tokens of `corpus`.

    `corpus` (a spec for `interp.corpus.load_corpus`; None: the built-in prose) also supplies the reference
    sample. `source` labels the text in the result (default: the text itself, or the corpus name). The removal
    test runs on corpus runs only (`config.removal`).
    """
    from interp.lens import logit_lens
    from interp.tokens import str_tokens

    config = config or MicroscopeConfig()
    if text is not None and not text.strip():
        raise InterpError("the text is empty; pass some text")
    tokens = text_tokens(model, text, config.max_tokens) if text is not None else None
    data = prepare_corpus(corpus)
    n_ref = config.reference_tokens // config.seq_len
    n_analysed = 0 if tokens is not None else max(1, config.corpus_tokens // config.seq_len)
    if n_ref * (config.seq_len - 1) <= model.cfg.d_model:  # a least-squares map would fit exactly: all "linear"
        raise InterpError(f"the reference sample gives {n_ref * (config.seq_len - 1)} tokens to fit, not more than "
                          f"the model's {model.cfg.d_model} dimensions; raise --reference-tokens (a few times that)")
    rows = corpus_rows(model, data, n_ref + n_analysed, config.seq_len)
    reference = hidden_states(model, rows[:n_ref])  # [L+1, R, S, d]
    analysed_rows = tokens[None] if tokens is not None else rows[n_ref:]
    analysed = hidden_states(model, analysed_rows)

    n_states, d = reference.shape[0], reference.shape[-1]
    fitted = reference[:, :, 1:].reshape(n_states, -1, d)  # position 0 (the sink) left out
    flat = analysed.reshape(n_states, -1, d)
    fits = [fit_linear(fitted[layer], fitted[layer + 1]) for layer in range(n_states - 1)]
    nonlinearity = torch.stack([fit.errors(flat[layer], flat[layer + 1]) for layer, fit in enumerate(fits)]).float()
    pick = torch.randperm(fitted.shape[1], generator=torch.Generator().manual_seed(config.memory.seed))
    pick = pick[:config.id_points]
    dims = torch.tensor([two_nn_dimension(fitted[layer, pick], config.id_fraction) for layer in range(n_states)])

    embeddings = torch.nn.functional.normalize(model.W_E.detach().float().cpu(), dim=-1)
    head = train_context_head(reference, rows[:n_ref], embeddings, config.memory)
    loss, acc = context_scores(head, analysed, analysed_rows, embeddings)

    strings = [s for row in analysed_rows for s in str_tokens(model, row)]
    classes = [token_class(s) for s in strings]
    positions = list(range(analysed_rows.shape[1])) * analysed_rows.shape[0]
    frame = pd.DataFrame({"position": positions, "token": strings, "class": classes,
                          "context_loss": loss.reshape(-1).tolist(), "context_acc": acc.reshape(-1).tolist(),
                          "nonlinearity": nonlinearity.mean(0).tolist()})
    body = frame[frame["position"] > 0]
    corr = body["context_loss"].rank().corr(body["nonlinearity"].rank()) if len(body) > 1 else math.nan
    removal = pd.DataFrame()
    if tokens is None and config.removal:
        S = analysed_rows.shape[1]
        removal = removal_effects(model, list(analysed_rows), [classes[i:i + S] for i in range(0, len(classes), S)],
                                  seed=config.memory.seed)
    lens_text = text if text is not None else model.tokenizer.decode(analysed_rows[0, :64].tolist())
    lens = logit_lens(model, lens_text)
    return MicroscopeResult(
        model=getattr(model.cfg, "spec", model.cfg.model_name),
        source=source or (text if text is not None else data.name), corpus=data.name,
        tokens=strings, positions=positions, token_classes=classes,
        layers=["embed"] + [str(layer) for layer in range(n_states - 1)],
        nonlinearity=nonlinearity, linearity=torch.tensor([fit.linearity for fit in fits]),
        intrinsic_dim=dims.float(), context_loss=loss.reshape(-1), context_acc=acc.reshape(-1),
        pool_weights=head.pool.detach().softmax(0), memory_settings=dataclasses.asdict(config.memory),
        reference_tokens=n_ref * config.seq_len, memory_nonlinearity_corr=float(corr),
        classes=class_table(frame), removal=removal,
        lens_tokens=lens.tokens, lens_top=lens.grid_tokens, lens_probs=lens.grid_probs,
    )

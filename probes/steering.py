"""Causal tests of a probe direction (Marks & Tegmark, section 5): does the model use it?

A few-shot prompt asks the model to judge a held-out statement ("... This statement is: True\\n" per
shot, then the statement and " This statement is:"), and the score is the logit difference between
the two answers (" True" minus " False") at the last token. Interventions act on
`blocks.{l}.hook_resid_post` at the chosen layers, from the statement's last token to the end of the
prompt (the few-shot prefix is left alone):
- add / subtract the probe direction scaled to the class-mean gap (mu_true - mu_false along the
  direction), once per chosen layer, `alpha` times: adding to false statements should raise P(True),
  subtracting from true statements should lower it;
- ablate: set the residual's component along the direction to its training mean, which removes what
  the direction says while staying on-distribution; the loss is the drop in separation (mean logit
  difference of true minus false statements);
- the same three with a random direction of equal size, as a control.
Probes are fit on rows disjoint (by group) from the evaluated statements and the shots.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interp.errors import InterpError, check_finite
from interp.hooks import check_layer, resid_post
from interp.models.readout import residual_logits
from interp.results import Result, register_result
from interp.steering.core import add_hook as steering_add_hook
from interp.tokens import answer_token
from probes.collect import cached_activations, tokenize
from probes.datasets import ProbeDataset
from probes.estimators import make_probe

SUFFIX = " This statement is:"
ANSWERS = (" True", " False")
Hook = tuple[str, Callable]


@register_result
@dataclasses.dataclass
class SteeringResult(Result):
    kind = "steering"
    model: str
    dataset: str
    method: str
    layers: list[int]
    alpha: float
    answers: list[str]
    example_prompt: str
    vector_norms: list[float]  # |gap-scaled direction| per layer
    # condition, statements ("true"/"false"), n, p_true (P(answer 0) of the two), margin (logit difference),
    # shift +- shift_se (margin change against baseline on the same statements), judged_true
    frame: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def cell(self, condition: str, statements: str, column: str = "margin") -> float:
        rows = self.frame[(self.frame.condition == condition) & (self.frame.statements == statements)]
        return float(rows[column].iloc[0]) if len(rows) else float("nan")

    def separation(self, condition: str) -> float:
        """Mean answer-logit difference of true statements minus that of false statements."""
        return self.cell(condition, "true") - self.cell(condition, "false")

    def figure(self):
        import plotly.graph_objects as go

        from interp.plotting import escape_label

        fig = go.Figure()
        for statements, rows in self.frame.groupby("statements"):
            fig.add_trace(go.Bar(x=rows.condition, y=rows["shift"], name=f"{statements} statements",
                                 error_y=dict(type="data", array=(1.96 * rows.shift_se).tolist())))
        a, b = self.answers
        fig.update_layout(barmode="group", yaxis_title=escape_label(f"change of logit({a!r}) - logit({b!r})"),
                          title=escape_label(f"Steering with the {self.method} direction of {self.dataset} at "
                                             f"layers {self.layers} (alpha {self.alpha}); bars: 95% intervals"))
        return fig

    def summary(self) -> str:
        t = self.answers[0]

        def moved(cond: str, statements: str) -> str:
            return (f"P({t!r}) {self.cell('baseline', statements, 'p_true'):.3f} -> "
                    f"{self.cell(cond, statements, 'p_true'):.3f}, logit diff {self.cell(cond, statements, 'shift'):+.2f}"
                    f" +- {self.cell(cond, statements, 'shift_se'):.2f}, judged true "
                    f"{self.cell('baseline', statements, 'judged_true'):.0%} -> "
                    f"{self.cell(cond, statements, 'judged_true'):.0%}")

        return "\n".join([
            f"steering with the {self.method} probe direction of {self.dataset!r} at layers {self.layers}, "
            f"alpha {self.alpha} ({self.model})",
            f"  add to false statements:        {moved('add', 'false')}",
            f"  random direction, same size:    {moved('random add', 'false')}",
            f"  subtract from true statements:  {moved('subtract', 'true')}",
            f"  random direction, same size:    {moved('random subtract', 'true')}",
            f"  separation (true - false logit diff): baseline {self.separation('baseline'):+.2f}, "
            f"direction ablated {self.separation('ablate'):+.2f}, random ablated "
            f"{self.separation('random ablate'):+.2f}",
            self.frame.round(3).to_string(index=False),
        ])


def few_shot_prefix(shots: Sequence[tuple[str, int]], answers: Sequence[str] = ANSWERS,
                    suffix: str = SUFFIX) -> str:
    """The labelled examples that precede every judged statement."""
    return "".join(f"{text}{suffix}{answers[0] if label else answers[1]}\n" for text, label in shots)


def _answer_ids(model, answers: Sequence[str]) -> tuple[int, int]:
    ids = tuple(answer_token(model, a)[0] for a in answers)
    if len(ids) != 2 or ids[0] == ids[1]:
        raise InterpError(f"answers {list(answers)} must be two with different first tokens; e.g. ' True,False'")
    return ids


def add_hook(layer: int, vector: torch.Tensor, mask: torch.Tensor) -> Hook:
    """Add `vector` to the residual after block `layer` where `mask` [B, T] is set (interp.steering's addition)."""
    return steering_add_hook(resid_post(layer), vector, mask)


def ablate_hook(layer: int, direction: torch.Tensor, mean: float, mask: torch.Tensor) -> Hook:
    """Set the residual's component along the unit `direction` to `mean` where `mask` is set."""
    def fn(resid, hook):
        u = direction.to(resid)
        shift = (resid @ u - mean) * mask.to(resid.dtype)
        return resid - shift[..., None] * u
    return resid_post(layer), fn


@torch.no_grad()
def answer_margins(model, prompts: Sequence[str], starts: Sequence[int], answer_ids: tuple[int, int],
                   hooks: Callable[[torch.Tensor], list[Hook]] = lambda mask: [],
                   batch_size: int = 8) -> np.ndarray:
    """Logit(answer 0) - logit(answer 1) after each prompt, with `hooks(mask)` active; `mask` [B, T]
    marks each prompt's tokens from `starts[i]` to its end (right padding, read at the last real token)."""
    ids = tokenize(model, prompts)
    pad = model.tokenizer.pad_token_id or 0
    out = np.zeros(len(prompts))
    for lo in range(0, len(ids), batch_size):
        rows = list(range(lo, min(lo + batch_size, len(ids))))
        n = torch.tensor([len(ids[r]) for r in rows])
        tokens = torch.full((len(rows), int(n.max())), pad, dtype=torch.long)
        for b, r in enumerate(rows):
            tokens[b, :n[b]] = torch.tensor(ids[r])
        pos = torch.arange(tokens.shape[1])[None, :]
        mask = ((pos >= torch.tensor([starts[r] for r in rows])[:, None]) & (pos < n[:, None])).to(model.cfg.device)
        resid = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=hooks(mask),
                                     stop_at_layer=model.cfg.n_layers)
        last = resid[torch.arange(len(rows)), (n - 1).to(resid.device)]
        logits = residual_logits(model, last[:, None])[:, 0]
        out[lo:lo + len(rows)] = (logits[:, answer_ids[0]] - logits[:, answer_ids[1]]).cpu().numpy()
    return out


def _split(dataset: ProbeDataset, n_eval: int, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, eval, shot) row indices: groups never straddle two parts; eval and shots are balanced."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(dataset.groups if dataset.groups else [str(i) for i in range(len(dataset))])
    order = rng.permutation(np.unique(groups))
    taken: dict[str, list[int]] = {"eval": [], "shot": []}
    need = {"eval": n_eval // 2, "shot": shots // 2}
    used: set[str] = set()
    for part in ("shot", "eval"):
        for label in (1, 0):
            count = 0
            for g in order:
                if count >= need[part] or g in used:
                    continue
                rows = np.flatnonzero((groups == g) & (dataset.labels == label))
                if len(rows):
                    taken[part].append(int(rows[0]))
                    used.add(g)
                    count += 1
    train = np.flatnonzero(~np.isin(groups, list(used)))
    if len(taken["eval"]) < 2 * need["eval"] or len(np.unique(dataset.labels[train])) < 2:
        raise InterpError(f"dataset {dataset.name!r} is too small for {n_eval} evaluated statements; "
                          "lower --steer-n or add rows")
    shot_rows = np.array(taken["shot"])
    return train, np.array(taken["eval"]), shot_rows[rng.permutation(len(shot_rows))]


def _frame(margins: dict[str, np.ndarray], truth: np.ndarray) -> pd.DataFrame:
    """Per condition and statement class: mean P(answer 0), margin, paired shift from baseline, judged true."""
    # the model "judges true" above the midpoint of its own baseline margins for true and false statements
    threshold = (margins["baseline"][truth].mean() + margins["baseline"][~truth].mean()) / 2
    records = []
    for name, values in margins.items():
        for label, mask in (("true", truth), ("false", ~truth)):
            m = values[mask]
            if np.isnan(m).all():
                continue
            shift = m - margins["baseline"][mask]  # paired: the same statements without intervention
            records.append({"condition": name, "statements": label, "n": int(mask.sum()),
                            "p_true": float((1 / (1 + np.exp(-m))).mean()), "margin": float(m.mean()),
                            "shift": float(shift.mean()), "shift_se": float(shift.std(ddof=1) / np.sqrt(len(m))),
                            "judged_true": float((m > threshold).mean())})
    return pd.DataFrame(records)


def check_steer(model, dataset: ProbeDataset, method: str = "mass-mean", alpha: float = 1.0, n_eval: int = 60,
                shots: int = 4, answers: Sequence[str] = ANSWERS, seed: int = 0) -> tuple[int, int]:
    """Raise a one-line InterpError for steering settings that cannot work; the two answers' token ids.

    Cheap (no forward pass), so callers run it before the probe sweep whose best layer steering uses."""
    dataset.require_binary()
    make_probe(method)
    check_finite("--alpha", alpha)
    if n_eval < 2:
        raise InterpError(f"--steer-n must be at least 2, one true and one false statement (got {n_eval})")
    _split(dataset, n_eval, shots, seed)
    return _answer_ids(model, answers)


def steer(model, dataset: ProbeDataset, layers: Sequence[int], method: str = "mass-mean", alpha: float = 1.0,
          n_eval: int = 60, shots: int = 4, answers: Sequence[str] = ANSWERS, suffix: str = SUFFIX,
          seed: int = 0, batch_size: int = 8, workspace: str | Path | None = None) -> SteeringResult:
    """Fit `method` probes at `layers` on training rows and test their directions causally (see module doc)."""
    from tqdm.auto import tqdm

    answer_ids = check_steer(model, dataset, method, alpha, n_eval, shots, answers, seed)
    layers = sorted({check_layer(model, layer) for layer in layers})
    if not layers:
        raise InterpError("no steering layers chosen; pass e.g. --steer-layers 12")
    train, held, shot_rows = _split(dataset, n_eval, shots, seed)
    acts = cached_activations(model, [dataset.texts[i] for i in train], layers, "last", None, 32, workspace)
    probes = [make_probe(method).fit(acts[i], dataset.labels[train]) for i in range(len(layers))]
    dirs = [torch.as_tensor(p.direction_, dtype=torch.float32) for p in probes]
    gen = torch.Generator().manual_seed(seed)
    random_dirs = [(v := torch.randn(model.cfg.d_model, generator=gen)) / v.norm() for _ in layers]
    sizes = [p.mean_gap_ * alpha for p in probes]

    def adds(sign: float, directions: list[torch.Tensor]) -> Callable:
        return lambda mask: [add_hook(layer, sign * size * d, mask)
                             for layer, d, size in zip(layers, directions, sizes, strict=True)]

    def ablates(directions: list[torch.Tensor]) -> Callable:
        centres = [float((acts[i] @ d).mean()) for i, d in enumerate(directions)]
        return lambda mask: [ablate_hook(layer, d, c, mask)
                             for layer, d, c in zip(layers, directions, centres, strict=True)]

    # (condition, which statements, hooks): add only to false and subtract only from true statements
    conditions = [
        ("baseline", None, lambda mask: []),
        ("add", False, adds(1.0, dirs)),
        ("subtract", True, adds(-1.0, dirs)),
        ("random add", False, adds(1.0, random_dirs)),
        ("random subtract", True, adds(-1.0, random_dirs)),
        ("ablate", None, ablates(dirs)),
        ("random ablate", None, ablates(random_dirs)),
    ]
    prefix = few_shot_prefix([(dataset.texts[i], int(dataset.labels[i])) for i in shot_rows], answers, suffix)
    statements = [dataset.texts[i] for i in held]
    prompts = [prefix + s + suffix for s in statements]
    starts = [len(x) - 1 for x in tokenize(model, [prefix + s for s in statements])]
    truth = dataset.labels[held].astype(bool)
    margins: dict[str, np.ndarray] = {}
    for name, which, hooks in tqdm(conditions, desc="steering", unit="condition", file=sys.stderr):
        rows = np.arange(len(held)) if which is None else np.flatnonzero(truth == which)
        margins[name] = np.full(len(held), np.nan)
        margins[name][rows] = answer_margins(model, [prompts[i] for i in rows], [starts[i] for i in rows],
                                             answer_ids, hooks, batch_size)
    return SteeringResult(
        model=getattr(model.cfg, "spec", model.cfg.model_name), dataset=dataset.name, method=method, layers=layers,
        alpha=alpha, answers=list(answers), example_prompt=prompts[0],
        vector_norms=[abs(size) for size in sizes], frame=_frame(margins, truth))

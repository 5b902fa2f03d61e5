"""CounterFact-style scores of an edit, before and after, per case and aggregated.

As in the ROME code (`eval_utils_counterfact.py`, `summarize.py`): every prompt is scored by the
teacher-forced mean per-token NLL of the new and of the true target. Efficacy / paraphrase = share
of rewrite / paraphrase prompts where NLL(new) < NLL(true); neighborhood = share of neighborhood
prompts where the true target is still preferred; magnitudes = the matching probability differences
exp(-NLL_new) - exp(-NLL_true) (sign flipped for neighborhood); *_acc = every target token is the
argmax. Fluency = the weighted bi/tri-gram entropy (weights 2/3, 4/3) of top-5 sampled generations.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from circuits.editing.context import build_batch
from circuits.editing.requests import EditRequest
from interp.fluency import ngram_entropy

METRICS = ("efficacy", "paraphrase", "neighborhood")


@torch.no_grad()
def prompt_nlls(model, prompts: list[str], new: str, true: str, chunk: int = 32) -> tuple[list[float], ...]:
    """(NLL of `new`, NLL of `true`, new all-argmax, true all-argmax) for each prompt."""
    rows = [p for p in prompts for _ in (0, 1)]
    targets = [t for _ in prompts for t in (new, true)]
    nll, hit = [], []
    for i in range(0, len(rows), chunk):
        batch = build_batch(model, rows[i:i + chunk], [None] * len(rows[i:i + chunk]), targets[i:i + chunk])
        log_probs = model(batch.tokens).log_softmax(-1)
        for r, (pos, ids) in enumerate(zip(batch.target_pos, batch.target_ids)):
            lp = log_probs[r, pos]
            nll.append(float(-lp[torch.arange(len(ids)), ids].mean()))
            hit.append(lp.argmax(-1).tolist() == ids)
    return nll[0::2], nll[1::2], hit[0::2], hit[1::2]


@torch.no_grad()
def generate(model, prompt: str, max_new_tokens: int = 50, seed: int = 0) -> str:
    """A top-5 sampled continuation (like the reference `generate_fast`), seeded; prompt included."""
    tokens = model.to_tokens(prompt, prepend_bos=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(tokens, max_new_tokens=max_new_tokens, do_sample=True, top_k=5,
                             use_past_kv_cache=True, verbose=False, stop_at_eos=True)
    return model.tokenizer.decode(out[0], skip_special_tokens=True)


def _fraction(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def score_case(model, request: EditRequest, generations: int = 1, gen_tokens: int = 50) -> dict:
    """All scores of one CounterFact case on the model as it is now."""
    if request.target_true is None:
        raise ValueError("scoring needs target_true")
    groups = {"efficacy": [request.text], "paraphrase": request.paraphrase_prompts,
              "neighborhood": request.neighborhood_prompts}
    flat = [p for g in groups.values() for p in g]
    new, true, new_hit, true_hit = prompt_nlls(model, flat, request.target_new, request.target_true)
    row: dict = {"case_id": request.case_id, "subject": request.subject}
    at = 0
    for name, prompts in groups.items():
        n, t = new[at:at + len(prompts)], true[at:at + len(prompts)]
        if name == "neighborhood":
            row[name] = _fraction([a < b for a, b in zip(t, n)])
            row[f"{name}_magnitude"] = _mean([math.exp(-a) - math.exp(-b) for a, b in zip(t, n)])
            row[f"{name}_acc"] = _fraction(true_hit[at:at + len(prompts)])
        else:
            row[name] = _fraction([a < b for a, b in zip(n, t)])
            row[f"{name}_magnitude"] = _mean([math.exp(-a) - math.exp(-b) for a, b in zip(n, t)])
            row[f"{name}_acc"] = _fraction(new_hit[at:at + len(prompts)])
        at += len(prompts)
    row["nll_new"], row["nll_true"] = new[0], true[0]
    prompts = (request.generation_prompts or [request.text])[:generations]
    texts = [generate(model, p, gen_tokens, seed=i) for i, p in enumerate(prompts)]
    row["fluency"] = _mean([ngram_entropy(t) for t in texts])
    row["generation"] = texts[0] if texts else ""
    return row


def score_cases(model, requests: list[EditRequest], phase: str, generations: int = 1, gen_tokens: int = 50,
                progress: bool = True) -> pd.DataFrame:
    """One row per case: the scores of `requests` on the model as it is now, labelled `phase`."""
    import sys

    from tqdm.auto import tqdm

    rows = [score_case(model, r, generations, gen_tokens)
            for r in tqdm(requests, desc=f"scoring ({phase})", disable=not progress or len(requests) < 2,
                          file=sys.stderr)]
    frame = pd.DataFrame(rows)
    frame.insert(1, "phase", phase)
    return frame


def aggregate(cases: pd.DataFrame) -> pd.DataFrame:
    """Mean of every score per phase, plus ROME's overall score (harmonic mean of the three)."""
    numeric = [c for c in cases.columns if c not in ("case_id", "phase", "subject", "generation")]
    table = cases.groupby("phase", sort=False)[numeric].mean()
    table["score"] = table[list(METRICS)].apply(_harmonic, axis=1)
    return table


def _harmonic(values: pd.Series) -> float:
    values = values.dropna()
    if values.empty:
        return float("nan")
    return 0.0 if (values <= 0).any() else len(values) / (1 / values).sum()

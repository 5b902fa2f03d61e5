"""The paper's removal test on a corpus: delete every token of one class from each text and measure how much
harder the remaining tokens become to predict, beside a control that deletes as many random content tokens.

For each row and condition, the evaluated tokens are those kept by the deletion except the first kept one (it
has no context left). Their mean negative log-likelihood is taken twice, in the full text and in the shortened
text; perplexity is exp of the token-weighted mean over rows, and `rise` = ppl_removed / ppl_full.
"""

from __future__ import annotations

import pandas as pd
import torch

from interp.microscope.words import REMOVABLE


@torch.no_grad()
def token_nll(model, rows: list[torch.Tensor], batch: int = 8) -> list[torch.Tensor]:
    """Per row [S]: the NLL of each token given those before it (NaN at position 0). Rows of unequal length
    are padded on the right, which a causal model never attends to."""
    out: list[torch.Tensor] = []
    pad = model.tokenizer.eos_token_id or 0
    for start in range(0, len(rows), batch):
        group = rows[start:start + batch]
        width = max(len(r) for r in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        for i, r in enumerate(group):
            ids[i, :len(r)] = r
        logp = model(ids.to(model.cfg.device)).float().log_softmax(-1).cpu()
        nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        nll = torch.cat([torch.full((len(group), 1), float("nan")), nll], dim=1)
        out.extend(nll[i, :len(r)] for i, r in enumerate(group))
    return out


def _condition(model, rows, full_nll, keeps: list[torch.Tensor]) -> dict[str, float]:
    """Perplexities of the kept tokens (all but the first kept) with and without the deleted ones."""
    shortened = token_nll(model, [r[k] for r, k in zip(rows, keeps)])
    before, after, removed = [], [], 0
    for nll, short, keep in zip(full_nll, shortened, keeps):
        kept = keep.nonzero()[:, 0][1:]
        before.append(nll[kept])
        after.append(short[1:])
        removed += int((~keep).sum())
    before_t, after_t = torch.cat(before).double(), torch.cat(after).double()
    ppl_full, ppl_removed = float(before_t.mean().exp()), float(after_t.mean().exp())
    return {"removed": removed, "evaluated": len(before_t), "ppl_full": ppl_full, "ppl_removed": ppl_removed,
            "rise": ppl_removed / ppl_full}


def removal_effects(model, rows: list[torch.Tensor], classes: list[list[str]], seed: int = 0) -> pd.DataFrame:
    """One row per condition: each class of `REMOVABLE` deleted, then its control (the same number of random
    content tokens deleted per row, fewer when a row has fewer content tokens). rows: token ids [S] each."""
    generator = torch.Generator().manual_seed(seed)
    full_nll = token_nll(model, rows)
    records = []
    for name in REMOVABLE:
        keeps = [torch.tensor([c != name for c in row_classes]) for row_classes in classes]
        records.append({"condition": name, **_condition(model, rows, full_nll, keeps)})
        controls = []
        for keep, row_classes in zip(keeps, classes):
            content = torch.tensor([i for i, c in enumerate(row_classes) if c == "content"], dtype=torch.long)
            chosen = content[torch.randperm(len(content), generator=generator)[:int((~keep).sum())]]
            control = torch.ones(len(row_classes), dtype=torch.bool)
            control[chosen] = False
            controls.append(control)
        records.append({"condition": f"{name} control", **_condition(model, rows, full_nll, controls)})
    return pd.DataFrame(records)

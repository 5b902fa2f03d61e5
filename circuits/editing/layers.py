"""Default edit layers.

For the default model the ROME layer is where causal tracing puts the MLP effect at the subject's
last token (measured once, see MEASURED_ROME_LAYER); MEMIT and PMET spread their update over the
five layers that end there, as MEMIT's GPT-2 XL setting (13-17) ends at ROME's layer 17. Other
models fall back to the same relative depth as GPT-2 XL's layer 17 of 48.
"""

from __future__ import annotations

from interp.errors import InterpError
from interp.hooks import check_layer, parse_layers

# smollm2-135m: see circuits/editing/README material in the report; measured with circuits.tracing.
MEASURED_ROME_LAYER = {"smollm2-135m": 5}
MEMIT_SPAN = 5


def rome_layer(model) -> int:
    """The default ROME layer for `model`."""
    spec = getattr(model.cfg, "spec", None)
    if spec in MEASURED_ROME_LAYER:
        return MEASURED_ROME_LAYER[spec]
    return min(model.cfg.n_layers - 1, round(model.cfg.n_layers * 17 / 48))


def memit_layers(model) -> list[int]:
    """The default MEMIT/PMET layers: MEMIT_SPAN consecutive layers ending at the ROME layer."""
    last = rome_layer(model)
    return list(range(max(0, last - MEMIT_SPAN + 1), last + 1))


def resolve_layers(model, layers: str | int | list[int] | None, method: str) -> list[int]:
    """Checked layers for `method`: the default when None, else ints or a '4-8' / '3,5' string."""
    if layers is None:
        return [rome_layer(model)] if method == "rome" else memit_layers(model)
    if isinstance(layers, str):
        out = parse_layers(model, layers)
    elif isinstance(layers, int):
        out = [check_layer(model, layers)]
    else:
        out = [check_layer(model, int(l)) for l in layers]
    if not out:
        raise InterpError("no layers given; pass e.g. --layers 5 or --layers 3-7")
    if method == "rome" and len(out) != 1:
        raise InterpError(f"ROME edits one layer but got {out}; pass one layer or use --method memit")
    if len(set(out)) != len(out):
        raise InterpError(f"layers {out} repeat a layer; list each once")
    return sorted(out)

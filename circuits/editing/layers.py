"""Default edit layers, chosen by causal tracing.

For the default model they were measured once with `circuits.tracing` (ROME's semantics: noise 3x the
subject-embedding std, 10 samples, window 10): the indirect effect of restoring the MLP outputs at the
subject's last token, averaged over 40 verified dev facts of the built-in set (every 4th), is
  layer  0    1    2    3    4    5    6    7    8   ...  13   ...  29
  IE   .187 .190 .218 .234 .237 .230 .102 .081 .077 ... .041 ... .001
so ROME edits the peak, layer 4, and MEMIT/PMET the five consecutive layers with the largest total
effect, 1-5 (MEMIT's GPT-J range 3-8 likewise covers its MLP-effect peak). Other models fall back to
the relative depth of ROME's GPT-2 XL layer (17 of 48) and the five layers ending there.

Measured layers are looked up by `model_identity`, a fingerprint of the token embedding, not by the
spec: the default model's float32 weights loaded from the spec, its converted folder or its .gguf
all find them, and so does the model after edits of its MLP or attention weights.
"""

from __future__ import annotations

from interp.errors import InterpError
from interp.fingerprint import weights_fingerprint
from interp.hooks import check_layer, parse_layers

SMOLLM2_135M = "a85cfe73abf5fc15e92e962d0d48542a"  # model_identity of smollm2-135m in float32
MEASURED_ROME_LAYER = {SMOLLM2_135M: 4}
MEASURED_MEMIT_LAYERS = {SMOLLM2_135M: [1, 2, 3, 4, 5]}
MEMIT_SPAN = 5


def model_identity(model) -> str:
    """`weights_fingerprint` of the token embedding (`embed.*`), which fact edits leave unchanged."""
    return weights_fingerprint(model, lambda name: name.startswith("embed."))


def rome_layer(model) -> int:
    """The default ROME layer for `model`."""
    identity = model_identity(model)
    if identity in MEASURED_ROME_LAYER:
        return MEASURED_ROME_LAYER[identity]
    return min(model.cfg.n_layers - 1, round(model.cfg.n_layers * 17 / 48))


def memit_layers(model) -> list[int]:
    """The default MEMIT/PMET layers: measured, else MEMIT_SPAN consecutive layers ending at the ROME layer."""
    identity = model_identity(model)
    if identity in MEASURED_MEMIT_LAYERS:
        return list(MEASURED_MEMIT_LAYERS[identity])
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

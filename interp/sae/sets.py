"""Sets of transcoders, one per MLP layer, as `interp sae train --layers` writes them and `interp graph` reads.

A set is a folder whose immediate subfolders are sae-lens transcoder folders (or one such folder itself).
Members are found by their `cfg.json` metadata, never by folder name: a member reading
`blocks.{l}.ln2.hook_normalized` and writing `blocks.{l}.hook_mlp_out` is layer l's transcoder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from interp.errors import InterpError
from interp.sae.io import CFG_FILE, check_fits, is_transcoder, load_sae

_HOOK_IN = re.compile(r"^blocks\.(\d+)\.ln2\.hook_normalized$")
_HOOK_OUT = "blocks.{}.hook_mlp_out"


def _member_layer(folder: Path) -> int:
    """The layer whose MLP the transcoder in `folder` replaces, from its cfg.json hooks."""
    try:
        meta = json.loads((folder / CFG_FILE).read_text()).get("metadata") or {}
    except ValueError as e:
        raise InterpError(f"{folder / CFG_FILE} is not valid JSON ({e}); restore or retrain it") from None
    hook, hook_out = meta.get("hook_name"), meta.get("hook_name_out")
    match = _HOOK_IN.match(hook or "")
    if match is None or hook_out != _HOOK_OUT.format(match.group(1)):
        raise InterpError(f"{folder} maps {hook!r} to {hook_out!r}; a transcoder set needs transcoders from "
                          "blocks.L.ln2.hook_normalized to blocks.L.hook_mlp_out (train with --hook-out)")
    return int(match.group(1))


def transcoder_folders(path: str | Path) -> dict[int, Path]:
    """{layer: folder} of the transcoders in `path` (one transcoder folder, or a folder of them)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InterpError(f"transcoder folder {root} does not exist; pass a folder written by `interp sae train`")
    members = [root] if (root / CFG_FILE).is_file() else sorted(
        p for p in root.iterdir() if p.is_dir() and (p / CFG_FILE).is_file())
    if not members:
        raise InterpError(f"{root} holds no transcoders (no {CFG_FILE} in it or its subfolders); "
                          "train a set with `interp sae train --hook-out ... --layers ...`")
    folders: dict[int, Path] = {}
    for folder in members:
        layer = _member_layer(folder)
        if layer in folders:
            raise InterpError(f"{folders[layer].name} and {folder.name} are both transcoders of layer {layer}; "
                              "keep one per layer in the set")
        folders[layer] = folder
    return dict(sorted(folders.items()))


def load_transcoder_set(path: str | Path, model, device: str | None = None) -> dict[int, object]:
    """{layer: transcoder} for every member of the set at `path`, each checked against `model`.

    Raises a one-line InterpError for an empty folder, a member that is not an ln2 -> MLP-out transcoder,
    one trained on another model or width, and two members for one layer.
    """
    device = device or str(model.cfg.device)
    out = {}
    for layer, folder in transcoder_folders(path).items():
        if layer >= model.cfg.n_layers:
            raise InterpError(f"{folder} is a transcoder of layer {layer} but the model has {model.cfg.n_layers} "
                              "layers; use the model it was trained on")
        sae = load_sae(folder, device=device)
        if not is_transcoder(sae):
            raise InterpError(f"{folder} holds an SAE, not a transcoder; train one with --hook-out")
        try:
            check_fits(model, sae, f"blocks.{layer}.ln2.hook_normalized", _HOOK_OUT.format(layer))
        except InterpError as e:
            raise InterpError(f"{folder}: {e}") from None
        if getattr(sae.cfg, "normalize_activations", "none") not in ("none", None):
            raise InterpError(f"{folder} normalizes its inputs ({sae.cfg.normalize_activations}); "
                              "graphs need transcoders that read raw activations (normalize_activations none)")
        out[layer] = sae
    return out


def write_random_set(model, out: str | Path, layers: list[int] | None = None, arch: str = "topk", k: int = 32,
                     expansion: float = 8.0, seed: int = 0) -> Path:
    """Write untrained (randomly initialised) transcoders for `layers` (default: all) of `model` as a set.

    Their features mean nothing; they have the shapes and sparsity of real ones, which is what timing
    benchmarks and tests of the graph's algebra need without hours of training.
    """
    from interp.sae.build import training_sae
    from interp.sae.config import TrainConfig
    from interp.sae.io import save_trained

    out = Path(out)
    spec = getattr(model.cfg, "spec", model.cfg.model_name)
    d = model.cfg.d_model
    members = []
    for layer in (range(model.cfg.n_layers) if layers is None else layers):
        hook, hook_out = f"blocks.{layer}.ln2.hook_normalized", _HOOK_OUT.format(layer)
        cfg = TrainConfig(hook=hook, hook_out=hook_out, arch=arch, k=k, expansion=expansion, model=spec,
                          seed=seed + layer)
        metadata = {"model_name": spec, "hook_name": hook, "hook_name_out": hook_out, "prepend_bos": False,
                    "skip_positions": 1, "interp_arch": arch}
        sae = training_sae(cfg, d, d, metadata)
        name = f"layer-{layer:02d}"
        save_trained(sae, out / name, 1.0, 1.0, torch.zeros(cfg.d_sae(d)),
                     {"config": cfg.to_dict(), "random_init": True})
        members.append({"name": name, "hook": hook, "hook_out": hook_out, "layer": layer})
    (out / "set.json").write_text(json.dumps({"members": members, "random_init": True}, indent=1))
    return out

"""Save an edited model as a Hugging Face folder that `load_model(folder)` (or `--model`) loads back.

The model's own source folder is copied and the MLP output weights that differ from it are replaced
in its safetensors files; everything else (config, tokenizer) stays byte-identical.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from interp.errors import InterpError
from interp.models import resolve_spec

from circuits.editing.handle import edit_stack, w_out

# Names of the MLP output weight in Hugging Face checkpoints, by architecture family.
DOWN_PROJ_NAMES = (
    "model.layers.{}.mlp.down_proj.weight",  # Llama, Mistral, Qwen, Gemma: [d_model, d_mlp]
    "transformer.h.{}.mlp.c_proj.weight",  # GPT-2 (Conv1D): [d_mlp, d_model]
    "transformer.h.{}.mlp.fc_out.weight",  # GPT-J
    "gpt_neox.layers.{}.mlp.dense_4h_to_h.weight",  # Pythia / GPT-NeoX
)


def _weight_files(folder: Path) -> dict[str, str]:
    """{tensor name: safetensors file name} for the folder's weights."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return json.loads(index.read_text())["weight_map"]
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InterpError(f"{folder} has no safetensors weights; saving edits needs a safetensors model")
    out = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            out.update({k: file.name for k in f.keys()})
    return out


def _hf_name(names: dict[str, str], layer: int) -> str:
    for pattern in DOWN_PROJ_NAMES:
        if pattern.format(layer) in names:
            return pattern.format(layer)
    raise InterpError(f"cannot find layer {layer}'s MLP output weight in the checkpoint; "
                      f"saving supports names like {DOWN_PROJ_NAMES[0]!r}")


def check_savable(model, folder: str | Path) -> tuple[Path, Path, dict[str, str]]:
    """(destination, source folder, {tensor name: file}) for saving `model` to `folder`.

    Raises a one-line error when saving cannot work (a destination that is a file or not empty, a source
    without safetensors weights or with unknown MLP weight names); cheap, so editors call it before editing.
    """
    out = Path(folder).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InterpError(f"{out} exists and is not empty (or is a file); pass a new folder for the edited model")
    source = resolve_spec(str(model.cfg.spec))
    names = _weight_files(source)
    for layer in range(model.cfg.n_layers):
        _hf_name(names, layer)
    return out, source, names


def save_model(model, folder: str | Path) -> Path:
    """Write the model with its current (edited) MLP output weights to a new folder `folder`."""
    from safetensors.torch import load_file, save_file

    out, source, names = check_savable(model, folder)
    changed: dict[str, dict[str, torch.Tensor]] = {}
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for layer in range(model.cfg.n_layers):
        name = _hf_name(names, layer)
        file = names[name]
        if file not in loaded:
            loaded[file] = load_file(str(source / file))
        stored = loaded[file][name]
        current = w_out(model, layer).detach().cpu()
        current = current if stored.shape == current.shape else current.T
        current = current.to(stored.dtype).contiguous()
        if not torch.equal(current, stored):
            changed.setdefault(file, {})[name] = current
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        for item in source.iterdir():
            if item.is_file() and item.name not in changed:
                shutil.copy2(item, tmp / item.name)
        for file, tensors in changed.items():
            merged = {**loaded[file], **tensors}
            save_file({k: v.contiguous() for k, v in merged.items()}, str(tmp / file), metadata={"format": "pt"})
        edits = [{"method": h.method, "layers": h.layers, "requests": [r.to_record() for r in h.requests]}
                 for h in edit_stack(model)]
        (tmp / "interp_edits.json").write_text(json.dumps({"base": str(model.cfg.spec), "edits": edits}, indent=1))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

"""Trained SAEs and transcoders on disk: `cfg.json` + `sae_weights.safetensors` as sae-lens writes
them (so `sae_lens.SAE.load_from_disk(DIR)` loads ours and we load theirs), plus `training.json`
(our run config and final training statistics) and `sparsity.safetensors` (log10 latent density).

A set (`interp sae train --layers ...` or a `--k`/`--expansion` sweep) is a folder of such folders,
one per member, plus `set.json` listing them. Readers find members by their `cfg.json`, not by name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError, check_finite
from interp.sae import transcoder
from interp.models.loader import spec_name
from interp.sae.activations import hook_dim

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
TRAINING_FILE = "training.json"
SPARSITY_FILE = "sparsity.safetensors"
SET_FILE = "set.json"


def _place(tmp: Path, out: Path) -> None:
    """Move every file of `tmp` into `out` (each move atomic), weights before the config."""
    for name in sorted(os.listdir(tmp), key=lambda n: n == CFG_FILE):
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp)


@torch.no_grad()
def save_trained(sae, out: Path, scale_in: float, scale_out: float, log_density: torch.Tensor,
                 training: dict[str, Any]) -> None:
    """Fold the normalization back into `sae` and write its inference form to `out`."""
    from safetensors.torch import save_file

    out = Path(out)
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if isinstance(sae, transcoder._TranscoderTraining):
        sae.fold_scales(scale_in, scale_out)
        state = sae.state_dict()
        sae.process_state_dict_for_saving_inference(state)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
        metadata = sae.cfg.get_inference_sae_cfg_dict()["metadata"]
        (tmp / CFG_FILE).write_text(json.dumps(transcoder.inference_config(sae, metadata)))
    else:
        sae.fold_activation_norm_scaling_factor(scale_in)
        sae.save_inference_model(tmp)
    save_file({"sparsity": log_density.float().cpu()}, str(tmp / SPARSITY_FILE))
    (tmp / TRAINING_FILE).write_text(json.dumps(training, indent=1))
    _place(tmp, out)


def write_set(out: Path, members: list[dict[str, Any]], info: dict[str, Any]) -> None:
    """Write `out/set.json`: {"members": [{"name", "hook", "hook_out", "layer", ...}], **info}."""
    tmp = Path(out) / f".{SET_FILE}.tmp"
    tmp.write_text(json.dumps({"members": members, **info}, indent=1))
    os.replace(tmp, Path(out) / SET_FILE)


def set_members(path: str | Path) -> list[Path] | None:
    """The member folders of the set at `path` (its subfolders holding a cfg.json, by name), or None when
    `path` is one SAE folder itself."""
    folder = Path(path)
    if (folder / CFG_FILE).is_file() or not folder.is_dir():
        return None
    members = sorted(p for p in folder.iterdir() if p.is_dir() and (p / CFG_FILE).is_file())
    return members or None


def load_sae(path: str | Path, device: str = "cpu"):
    """Load an SAE or transcoder folder (ours or sae-lens's), with one-line errors for bad folders.

    hook_z reshaping is switched off: callers pass activations with heads already concatenated.
    """
    from sae_lens import SAE

    folder = Path(path)
    if not (folder / CFG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise InterpError(f"{folder} holds no {CFG_FILE} + {WEIGHTS_FILE}; point at a folder written by `interp sae train --out`")
    try:
        json.loads((folder / CFG_FILE).read_text())
    except ValueError as e:
        raise InterpError(f"{folder / CFG_FILE} is not valid JSON ({e}); restore or retrain it") from None
    try:
        sae = SAE.load_from_disk(folder, device=device)
    except Exception as e:  # safetensors errors, missing or misshapen tensors, unknown architecture
        raise InterpError(f"{folder / WEIGHTS_FILE} is truncated, corrupt or does not match {CFG_FILE} "
                          f"({type(e).__name__}); restore or retrain it") from None
    check_loaded(folder, sae)
    sae.turn_off_forward_pass_hook_z_reshaping()
    sae.eval()
    return sae


def check_loaded(folder: Path, sae) -> None:
    """Raise a one-line error naming the file and field when an SAE loads but could only give meaningless
    numbers: weights with NaN or inf, `k` outside [1, d_sae], norm limits that are not positive numbers."""
    k = getattr(sae.cfg, "k", None)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= sae.cfg.d_sae):
        raise InterpError(f"{folder / CFG_FILE}: k must be a whole number from 1 to d_sae={sae.cfg.d_sae} "
                          f"(got {k!r}); fix it or retrain the SAE")
    for name in ("max_norm", "max_norm_out"):
        value = getattr(sae.cfg.metadata, name, None)
        if value is not None:
            check_finite(f"{folder / CFG_FILE}: metadata.{name}", value, above=0)
    for name, tensor in sae.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise InterpError(f"{folder / WEIGHTS_FILE}: {name} holds NaN or inf; retrain the SAE or restore the file")


def training_info(path: str | Path) -> dict[str, Any]:
    """Our training.json for a folder (empty for SAEs trained elsewhere)."""
    file = Path(path) / TRAINING_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def is_transcoder(sae) -> bool:
    from sae_lens.saes.transcoder import Transcoder

    return isinstance(sae, Transcoder)


def sae_hooks(sae, hook: str | None = None, hook_out: str | None = None) -> tuple[str, str | None]:
    """(input hook, target hook or None) for `sae`, from its metadata unless given."""
    meta = sae.cfg.metadata
    hook = hook or meta.hook_name
    if hook is None:
        raise InterpError("the SAE's cfg.json names no hook; pass --hook")
    if is_transcoder(sae):
        hook_out = hook_out or meta.hook_name_out
        if hook_out is None:
            raise InterpError("the transcoder's cfg.json names no output hook; pass --hook-out")
    return hook, hook_out if is_transcoder(sae) else None


def check_fits(model, sae, hook: str, hook_out: str | None) -> None:
    """Raise unless `sae` fits `model`: the model an interp-trained SAE names (by `spec_name`, so a folder
    copy of it under the same name fits; other SAEs name models by hub ids we cannot compare), the hooks
    and their widths."""
    trained_on, meta = sae.cfg.metadata.model_name, sae.cfg.metadata
    current = getattr(model.cfg, "spec", model.cfg.model_name)
    if getattr(meta, "interp_arch", None) and trained_on and spec_name(trained_on) != spec_name(current):
        raise InterpError(f"the SAE was trained on {trained_on}, not {current}; pass --model {trained_on}")
    width = hook_dim(model, hook)
    if width != sae.cfg.d_in:
        raise InterpError(f"the SAE reads {sae.cfg.d_in}-wide activations but {hook} is {width} wide; "
                          "use the model and hook it was trained on")
    if hook_out is not None and hook_dim(model, hook_out) != sae.cfg.d_out:
        raise InterpError(f"the transcoder writes {sae.cfg.d_out}-wide outputs but {hook_out} is "
                          f"{hook_dim(model, hook_out)} wide; use the model it was trained on")

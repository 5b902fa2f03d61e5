"""Steering vectors from their sources, named by the SPEC strings `interp steer --vector` takes.

- `dataset:NAME`: contrastive activation addition (CAA): the mean last-token `blocks.L.hook_resid_post`
  of the positive class (label 1) minus that of the negative class (label 0) of a built-in probe
  dataset (`sentiment`, `cities`, ...) or a .csv/.jsonl file with text,label; direction negative -> positive.
- `contrast:POS_FILE,NEG_FILE`: the same from two text files, one prompt per line.
- `probe:DIR[:METHOD]`: a saved probe sweep (`interp probe --workspace W` writes `W/probe/<name>`), at
  `--layer`: the probe's unit direction times its class-mean gap (Marks & Tegmark's intervention size);
  METHOD defaults to mass-mean when the sweep has it.
- `feature:SAE_DIR:INDEX`: row INDEX of an SAE's or transcoder's decoder (a set of them: the member at
  `--layer`). An SAE's feature is added at its own hook, a transcoder's at its output hook
  (`blocks.L.hook_mlp_out`), so coefficient c writes what the feature writes at activation c.
- `file:PATH`: a vector saved by `--save-vector` (safetensors key `vector`, metadata `hook_name`).
- `edit:DIR`: a ROME edit saved by `interp edit --save DIR`: the change it makes to the MLP output of its
  layer at the subject's last token of the rewrite prompt, k (W_edited - W) with k the MLP key there; the
  edited weights are read from DIR and W from the model, which must be the edit's base model.

Sources that carry their hook (feature, file, edit) set the default hook; the others are read at
`blocks.L.hook_resid_post` and added there unless `--hook` names another hook of the same width.
`parse_vector_spec` reads everything that needs no model (datasets, SAEs, files), so bad specs fail
before the model loads; `resolve_vector` computes the vector on the model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp.errors import InterpError, file_error
from interp.hooks import check_hook_names, check_layer, hook_layer, mlp_out, resid_post
from interp.steering.measure import Behaviour, FeatureBehaviour, ProbeBehaviour, TokenBehaviour

KINDS = ("dataset", "contrast", "probe", "feature", "file", "edit")
EXAMPLE = "e.g. dataset:sentiment, feature:runs/sae:123 or file:vector.safetensors"
EDITS_FILE = "interp_edits.json"  # what `circuits.editing.save.save_model` writes beside the weights


@dataclasses.dataclass
class SteeringVector:
    """What coefficient 1 adds (`vector`, [width] float32) at `hook`, where it came from, and the
    behaviour its source defines (None when the source defines none, e.g. a saved file)."""

    vector: torch.Tensor = dataclasses.field(repr=False)
    hook: str
    source: str
    behaviour: Behaviour | None = dataclasses.field(default=None, repr=False)

    @property
    def norm(self) -> float:
        return float(self.vector.norm())


@dataclasses.dataclass
class VectorSpec:
    """A parsed SPEC and what it names that can be read without the model."""

    kind: str
    text: str
    dataset: Any = None  # ProbeDataset (dataset, contrast, probe when its dataset loads)
    sae: Any = None  # feature
    index: int = 0  # feature
    folder: Path | None = None  # probe, feature member, edit
    tensor: torch.Tensor | None = None  # file
    hook: str | None = None  # the hook the source carries (feature, file, edit)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # probe: sweep, method; edit: record


def parse_vector_spec(spec: str, layer: int | None = None) -> VectorSpec:
    """Check `spec` and read what it names (datasets, prompt files, an SAE, a vector file, a saved edit);
    one-line errors for unknown kinds, missing files, one-class datasets and out-of-range features."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS or not rest:
        raise InterpError(f"cannot read vector {spec!r}; write KIND:WHAT with KIND one of {', '.join(KINDS)} "
                          f"({EXAMPLE})")
    parse = {"dataset": _parse_dataset, "contrast": _parse_contrast, "probe": _parse_probe,
             "feature": _parse_feature, "file": _parse_file, "edit": _parse_edit}[kind]
    return parse(VectorSpec(kind, spec), rest, layer)


def _parse_dataset(spec: VectorSpec, rest: str, layer: int | None) -> VectorSpec:
    from probes.datasets import load_dataset

    spec.dataset = load_dataset(rest).require_binary()
    return spec


def _read_lines(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, e) from None
    return [line for line in lines if line]


def _parse_contrast(spec: VectorSpec, rest: str, layer: int | None) -> VectorSpec:
    from probes.datasets import ProbeDataset

    files = rest.split(",")
    if len(files) != 2 or not all(f.strip() for f in files):
        raise InterpError(f"contrast vectors take two files, contrast:POS_FILE,NEG_FILE (got {rest!r})")
    pos, neg = (Path(f.strip()).expanduser() for f in files)
    texts = {path: _read_lines(path) for path in (pos, neg)}
    for path, lines in texts.items():
        if not lines:
            raise InterpError(f"{path} has no prompts, so the contrast has one class; write one prompt per line")
    spec.dataset = ProbeDataset(f"{pos.stem} vs {neg.stem}", texts[pos] + texts[neg],
                                np.array([1] * len(texts[pos]) + [0] * len(texts[neg]), dtype=np.int64))
    return spec


def _parse_probe(spec: VectorSpec, rest: str, layer: int | None) -> VectorSpec:
    from interp.results import Result
    from probes.datasets import load_dataset
    from probes.sweep import CLASSIFIERS, ProbeSweepResult

    folder, _, method = rest.rpartition(":") if rest.rpartition(":")[2] in CLASSIFIERS else (rest, "", "")
    sweep = Result.read(Path(folder).expanduser())
    if not isinstance(sweep, ProbeSweepResult):
        raise InterpError(f"{folder} holds a {sweep.kind!r} result, not a probe sweep; pass a folder that "
                          "`interp probe --workspace W` wrote (W/probe/<name>)")
    choices = [m for m in sweep.methods if m in CLASSIFIERS]
    if not choices:
        raise InterpError(f"the sweep in {folder} has no classifier probe to steer with; sweep with --method mass-mean")
    method = method or ("mass-mean" if "mass-mean" in choices else choices[0])
    if method not in choices:
        raise InterpError(f"the sweep in {folder} has no {method} probe (it has {', '.join(choices)}); "
                          f"use probe:{folder}:{choices[0]}")
    try:
        spec.dataset = load_dataset(sweep.dataset)
    except InterpError:
        spec.dataset = None  # a user file that moved: the vector works, only the behaviour measure is missing
    spec.folder, spec.extra = Path(folder), {"sweep": sweep, "method": method}
    return spec


def _sae_member(folder: Path, layer: int | None) -> Path:
    """`folder` itself when it is one SAE, else the member of the set whose hook is at `layer`."""
    from interp.sae.io import CFG_FILE, set_members

    members = set_members(folder)
    if members is None:
        return folder
    by_layer: dict[int, Path] = {}
    for member in members:
        try:
            hook = json.loads((member / CFG_FILE).read_text()).get("metadata", {}).get("hook_name")
        except (OSError, ValueError) as e:
            raise InterpError(f"{member / CFG_FILE} cannot be read ({type(e).__name__}); restore or retrain it") from None
        if isinstance(hook, str) and hook_layer(hook) is not None:
            by_layer.setdefault(hook_layer(hook), member)
    if layer is None or layer not in by_layer:
        raise InterpError(f"{folder} is a set of SAEs; pass --layer to pick its member (layers {sorted(by_layer)})")
    return by_layer[layer]


def _parse_feature(spec: VectorSpec, rest: str, layer: int | None) -> VectorSpec:
    from interp.sae.io import is_transcoder, load_sae, sae_hooks

    folder, sep, index = rest.rpartition(":")
    try:
        spec.index = int(index)
    except ValueError:
        sep = ""
    if not sep or not folder:
        raise InterpError(f"feature vectors are feature:SAE_DIR:INDEX, e.g. feature:runs/sae:123 (got {rest!r})")
    spec.folder = _sae_member(Path(folder).expanduser(), layer)
    spec.sae = load_sae(spec.folder)
    d_sae = spec.sae.cfg.d_sae
    if not 0 <= spec.index < d_sae:
        raise InterpError(f"feature index {spec.index} is out of range; {spec.folder} has features 0..{d_sae - 1}")
    hook, hook_out = sae_hooks(spec.sae)
    spec.hook = hook_out if is_transcoder(spec.sae) else hook
    return spec


def _parse_file(spec: VectorSpec, rest: str, layer: int | None) -> VectorSpec:
    path = Path(rest).expanduser()
    tensor, metadata = read_vector(path)
    spec.tensor, spec.hook, spec.folder = tensor, metadata.get("hook_name") or None, path
    return spec


def _parse_edit(spec: VectorSpec, rest: str, layer: int | None) -> VectorSpec:
    from circuits.editing.requests import from_record

    folder = Path(rest).expanduser()
    try:
        saved = json.loads((folder / EDITS_FILE).read_text())
    except (OSError, ValueError) as e:
        raise InterpError(f"{folder} is not an edited model saved by `interp edit --save` (no readable "
                          f"{EDITS_FILE}: {type(e).__name__}); pass that folder") from None
    edits = saved.get("edits") or []
    requests = [r for e in edits for r in e.get("requests", [])]
    layers = sorted({layer for e in edits for layer in e.get("layers", [])})
    if len(requests) != 1 or len(layers) != 1:
        raise InterpError(f"{folder} holds {len(requests)} request(s) over layers {layers}; edit: takes one "
                          "rewritten fact at one layer (a ROME edit)")
    spec.folder, spec.hook = folder, mlp_out(layers[0])
    spec.extra = {"base": saved.get("base"), "layer": layers[0],
                  "request": from_record(requests[0], f"{folder / EDITS_FILE}")}
    return spec


# -- the vector on the model ------------------------------------------------------------------
def resolve_vector(model, spec: VectorSpec | str, layer: int | None = None, hook: str | None = None,
                   workspace: str | Path | None = None, seed: int = 0) -> SteeringVector:
    """The steering vector `spec` names, on `model`: computed (datasets: one pass over their texts),
    checked to fit the model (an SAE of another model, a vector or hook of the wrong width: one line)."""
    from interp.sae.activations import hook_dim

    spec = parse_vector_spec(spec, layer) if isinstance(spec, str) else spec
    if spec.hook is None:
        if layer is None:
            raise InterpError(f"{spec.kind}: vectors need --layer, the layer whose residual stream they are read "
                              "at (e.g. --layer 15)")
        layer = check_layer(model, layer)
        where = resid_post(layer)
    else:
        check_hook_names(model, [spec.hook])
        if layer is not None and hook_layer(spec.hook) != check_layer(model, layer):
            raise InterpError(f"the {spec.kind} vector belongs to {spec.hook}; drop --layer or pass "
                              f"--layer {hook_layer(spec.hook)}")
        where = spec.hook
    if spec.kind == "feature":  # an SAE of another model is named as such before any width talk
        from interp.sae.io import check_fits, sae_hooks

        check_fits(model, spec.sae, *sae_hooks(spec.sae))
    hook = check_hook_names(model, [hook or where])[0]
    width = hook_dim(model, hook)
    if _width(model, spec) != width:
        raise InterpError(f"the vector is {_width(model, spec)} wide but {hook} is {width} wide; use a vector made "
                          "for this model and hook")
    vector, behaviour = _compute(model, spec, layer, workspace, seed)
    if not torch.isfinite(vector).all():
        raise InterpError(f"the vector of {spec.text} holds NaN or inf; check its source")
    return SteeringVector(vector.detach().float().reshape(-1).cpu(), hook, spec.text, behaviour)


def _width(model, spec: VectorSpec) -> int:
    """The width of the vector `spec` names, known before computing it."""
    if spec.kind == "feature":
        return int(spec.sae.W_dec.shape[1])
    if spec.kind == "file":
        return spec.tensor.numel()
    return model.cfg.d_model


def _compute(model, spec: VectorSpec, layer: int | None, workspace, seed: int) -> tuple[torch.Tensor, Behaviour | None]:
    """(vector, behaviour) of a parsed spec (`layer`: the checked --layer, for sources read at a layer)."""
    if spec.kind in ("dataset", "contrast"):
        return caa_vector(model, spec.dataset, layer, workspace, seed)
    if spec.kind == "probe":
        sweep, method = spec.extra["sweep"], spec.extra["method"]
        if layer not in sweep.layers:
            raise InterpError(f"the sweep in {spec.folder} has no probe at layer {layer}; pick one of {sweep.layers}")
        behaviour = None
        if spec.dataset is not None and spec.dataset.binary:
            behaviour = caa_vector(model, spec.dataset, layer, workspace, seed)[1]
        return sweep.steering_vector(method, layer).float(), behaviour
    if spec.kind == "feature":
        from interp.sae.io import sae_hooks

        read = sae_hooks(spec.sae)[0]
        return spec.sae.W_dec[spec.index].detach().float(), FeatureBehaviour.of(model, spec.sae, spec.index, read)
    if spec.kind == "file":
        return spec.tensor, None
    return edit_vector(model, spec)


def mean_difference(acts: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """[N, d] activations -> mean of the rows labelled 1 minus mean of the rows labelled 0."""
    positive = torch.as_tensor(np.asarray(labels) == 1)
    return acts[positive].mean(0) - acts[~positive].mean(0)


def caa_vector(model, dataset, layer: int, workspace=None, seed: int = 0) -> tuple[torch.Tensor, ProbeBehaviour]:
    """Contrastive activation addition at `layer` (last token, all rows) and the probe behaviour fitted on
    the same texts at the last layer; both from one pass."""
    from probes.collect import cached_activations

    dataset.require_binary()
    last = model.cfg.n_layers - 1
    layers = sorted({layer, last})
    acts = cached_activations(model, dataset.texts, layers, "last", None, 32, workspace)
    vector = mean_difference(acts[layers.index(layer)], dataset.labels)
    return vector, ProbeBehaviour.fit(model, dataset, acts[layers.index(last)], seed)


@torch.no_grad()
def edit_vector(model, spec: VectorSpec) -> tuple[torch.Tensor, TokenBehaviour]:
    """A saved ROME edit's change of its layer's MLP output at the subject's last token of the rewrite
    prompt: k (W_edited - W), k = the MLP key (`mlp.hook_post`) there on `model`, the edit's base."""
    from safetensors import safe_open

    from circuits.editing.handle import w_out
    from circuits.editing.keys import plain
    from circuits.editing.save import _hf_name, _weight_files
    from circuits.editing.stats import key_hook
    from interp.models.loader import spec_name
    from interp.tokens import answer_token

    base, layer, request = spec.extra["base"], spec.extra["layer"], spec.extra["request"]
    current = getattr(model.cfg, "spec", model.cfg.model_name)
    if base and spec_name(str(base)) != spec_name(str(current)):
        raise InterpError(f"{spec.folder} edits {base}, not {current}; pass --model {base}")
    names = _weight_files(spec.folder)
    name = _hf_name(names, layer)
    try:
        with safe_open(str(spec.folder / names[name]), "pt") as f:
            edited = f.get_tensor(name).float()
    except OSError as e:
        raise file_error(spec.folder / names[name], e) from None
    weight = w_out(model, layer).detach().float()
    edited = edited.to(weight.device)
    delta = (edited if edited.shape == weight.shape else edited.T) - weight
    if not delta.any():
        raise InterpError(f"the model's layer-{layer} MLP weights already equal the edit's; steer the unedited "
                          f"model (--model {base}) with edit:{spec.folder}")
    key = plain(model, key_hook(layer), [request])[0].float().to(delta.device)
    new = answer_token(model, request.target_new)[0]
    true = answer_token(model, request.target_true)[0] if request.target_true else None
    behaviour = TokenBehaviour(tokens=[new], against=None if true is None else [true],
                               words={"new": request.target_new, "true": request.target_true})
    return key @ delta, behaviour


# -- saved vectors ------------------------------------------------------------------------------
def check_vector_path(path: str | Path) -> Path:
    """`path` as a Path if a vector file can be written there (a .safetensors name in an existing, writable
    folder), else a one-line error; cheap, so the CLI checks it before loading the model."""
    import os

    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise InterpError(f"--save-vector {path} must end in .safetensors; pass e.g. {path.with_suffix('.safetensors')}")
    if path.is_dir():
        raise InterpError(f"--save-vector {path} is a folder; pass a file name such as {path / 'vector.safetensors'}")
    if not path.parent.is_dir():
        raise InterpError(f"--save-vector {path}: folder {path.parent} does not exist; create it or choose another")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise InterpError(f"--save-vector {path} is not writable; fix its permissions or choose another file")
    return path


def save_vector(steering_vector: SteeringVector, path: str | Path) -> Path:
    """Write exactly what coefficient 1 adds: safetensors key `vector` ([width] float32), metadata `hook_name`."""
    from safetensors.torch import save_file

    path = check_vector_path(path)
    try:
        save_file({"vector": steering_vector.vector.float().contiguous()}, str(path),
                  metadata={"hook_name": steering_vector.hook})
    except OSError as e:
        raise file_error(path, e) from None
    return path


def read_vector(path: str | Path) -> tuple[torch.Tensor, dict[str, str]]:
    """(vector [width] float32, metadata) of a file `save_vector` wrote; one-line errors for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    try:
        with safe_open(str(path), "pt") as f:
            if "vector" not in f.keys():
                raise InterpError(f"{path} holds no tensor named 'vector' (it has {list(f.keys())[:5]}); "
                                  "pass a file written by --save-vector")
            tensor, metadata = f.get_tensor("vector"), f.metadata() or {}
    except OSError as e:
        raise file_error(path, e) from None
    except SafetensorError as e:
        raise InterpError(f"{path} is not a safetensors file ({e}); pass a file written by --save-vector") from None
    if tensor.ndim != 1 or not tensor.is_floating_point() or not torch.isfinite(tensor).all():
        raise InterpError(f"{path}: 'vector' must be one row of finite floats (got shape {list(tensor.shape)}, "
                          f"{tensor.dtype}); pass a file written by --save-vector")
    return tensor.float(), metadata

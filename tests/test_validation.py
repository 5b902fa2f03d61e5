"""Numbers that cannot give a meaningful result are refused with one line, never turned into NaN output:
training settings, a diverging training run, SAE files, an SAE used with another model, JSON output, and
the numeric parameters of the analyses' Python APIs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from interp.errors import InterpError
from interp.results import Result
from interp.sae import TrainConfig, load_sae, train
from interp.sae.train import Trainer
from test_sae import RESID, tiny_cfg

INF, NAN = float("inf"), float("nan")


@pytest.fixture(scope="module")
def sae_dir(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("validation") / "topk"
    train(tiny_llama, tiny_cfg(), out)
    return out


# -- training settings and runs --------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("lr", INF), ("lr", NAN), ("lr", 0.0), ("sparsity_coefficient", NAN), ("sparsity_coefficient", -1.0),
    ("aux_k_coefficient", INF), ("expansion", INF), ("k", 0), ("warmup_fraction", NAN), ("outlier_ratio", INF),
    ("width", 4),  # fewer latents than k=8
])
def test_train_config_refuses_values_that_cannot_train(field, value):
    with pytest.raises(InterpError) as e:
        tiny_cfg(**{field: value})
    assert "\n" not in str(e.value)


def test_train_with_an_infinite_lr_is_refused_before_any_work(tiny_llama, tmp_path):
    with pytest.raises(InterpError, match="--lr must be a finite number above 0"):
        train(tiny_llama, TrainConfig(hook=RESID, lr=INF, model="tiny-llama"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_k_above_the_latents_of_the_hook_is_refused_before_any_file(tiny_llama, tmp_path):
    cfg = tiny_cfg(width=None, expansion=0.05, k=8)  # 64-wide hook: 3 latents
    with pytest.raises(InterpError, match="3 latents cannot hold k=8"):
        train(tiny_llama, cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_leaves_no_finished_sae(tiny_llama, tmp_path):
    out = tmp_path / "diverged"
    with pytest.raises(InterpError, match=r"training stopped at step \d+: the loss became (nan|inf); lower --lr"):
        train(tiny_llama, tiny_cfg(lr=1e10), out)
    assert not (out / "cfg.json").exists()
    with pytest.raises(InterpError, match="holds no cfg.json"):
        load_sae(out)


def test_nan_loss_mid_run_stops_at_that_step_after_the_earlier_checkpoints(tiny_llama, tmp_path, monkeypatch):
    scaled = Trainer._scaled

    def poisoned(self, batch):  # NaN inputs from step 5 on, after a checkpoint at step 4
        return scaled(self, batch) * (NAN if self.step >= 5 else 1.0)

    monkeypatch.setattr(Trainer, "_scaled", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(InterpError, match="training stopped at step 5: the loss became nan"):
        train(tiny_llama, tiny_cfg(checkpoint_every=512), out)
    assert (out / "checkpoints").is_dir() and not (out / "cfg.json").exists()


# -- SAE files and the model they belong to ---------------------------------------------------------------


def _broken_copy(src, dst, cfg_edit=None, weights_edit=None):
    shutil.copytree(src, dst)
    if cfg_edit:
        cfg = json.loads((dst / "cfg.json").read_text())
        cfg_edit(cfg)
        (dst / "cfg.json").write_text(json.dumps(cfg))
    if weights_edit:
        weights = load_file(dst / "sae_weights.safetensors")
        weights_edit(weights)
        save_file(weights, dst / "sae_weights.safetensors")
    return dst


def _set(key, value, where=None):
    return lambda cfg: (cfg if where is None else cfg[where]).update({key: value})


@pytest.mark.parametrize("name, cfg_edit, weights_edit, message", [
    ("k0", _set("k", 0), None, r"cfg.json: k must be a whole number from 1 to d_sae=256 \(got 0\)"),
    ("kbig", _set("k", 1000), None, r"cfg.json: k must be a whole number from 1 to d_sae=256 \(got 1000\)"),
    ("norm_str", _set("max_norm", "abc", "metadata"), None, r"cfg.json: metadata.max_norm must be a finite number"),
    ("norm_neg", _set("max_norm", -1.0, "metadata"), None, r"cfg.json: metadata.max_norm must be a finite number"),
    ("nan_w", None, lambda w: w["W_dec"].__setitem__((0, 0), NAN), r"sae_weights.safetensors: W_dec holds NaN"),
    ("inf_b", None, lambda w: w["b_enc"].__setitem__(3, INF), r"sae_weights.safetensors: b_enc holds NaN or inf"),
])
def test_sae_files_with_meaningless_numbers_are_refused_naming_file_and_field(sae_dir, tmp_path, name, cfg_edit,
                                                                             weights_edit, message):
    broken = _broken_copy(sae_dir, tmp_path / name, cfg_edit, weights_edit)
    with pytest.raises(InterpError, match=message) as e:
        load_sae(broken)
    assert str(broken) in str(e.value) and "\n" not in str(e.value)


def test_sae_eval_with_another_model_names_the_sae_model(sae_dir, capsys):
    from interp.cli import main

    assert main(["sae", "eval", str(sae_dir), "--model", "tiny-gpt2", "--tokens", "256"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == ["error: the SAE was trained on tiny-llama, not tiny-gpt2; pass --model tiny-llama"]


def test_the_same_model_loaded_from_its_folder_fits_its_sae(sae_dir, tiny_gpt2):
    from interp.models import load_model, resolve_spec
    from interp.sae import io

    sae = load_sae(sae_dir)
    assert sae.cfg.metadata.model_name == "tiny-llama"
    io.check_fits(load_model(str(resolve_spec("tiny-llama"))), sae, RESID, None)
    with pytest.raises(InterpError, match="pass --model tiny-llama"):
        io.check_fits(tiny_gpt2, sae, RESID, None)


# -- JSON output --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class NaNResult(Result):
    kind = "nan_test"
    score: float
    scores: torch.Tensor
    frame: pd.DataFrame
    extra: dict

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def summary(self) -> str:
        return "nan test"

    def to_dict(self) -> dict:  # as TraceResult does: raw floats added after the base conversion
        return {**super().to_dict(), "added": [NAN, 1.0]}


def _nan_result() -> NaNResult:
    return NaNResult(score=NAN, scores=torch.tensor([1.0, NAN, INF]), frame=pd.DataFrame({"x": [NAN, 1.0, -INF]}),
                     extra={"a": np.float32("nan"), "b": [np.float64(INF), 2], "c": np.array([NAN, 0.5])})


def test_to_dict_turns_nan_and_inf_into_null_in_floats_tensors_frames_and_numpy_values():
    d = Result.to_dict(_nan_result())
    assert d["score"] is None and d["scores"] == [1.0, None, None]
    assert d["frame"] == [{"x": None}, {"x": 1.0}, {"x": None}]
    assert d["extra"] == {"a": None, "b": [None, 2], "c": [None, 0.5]}
    json.dumps(d, allow_nan=False)


def test_cli_json_is_strict_json_even_for_values_a_subclass_adds(capsys):
    from interp.cli import _emit

    _emit(_nan_result(), argparse.Namespace(json=True, workspace=None, html=None))
    out = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    assert out["score"] is None and out["added"] == [None, 1.0]


def test_saved_result_json_is_strict_and_float_fields_read_back_as_nan(tmp_path):
    _nan_result().write(tmp_path)
    json.loads((tmp_path / "result.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in result.json"))
    back = NaNResult.read(tmp_path)
    assert math.isnan(back.score) and back.extra["c"] == [None, 0.5]
    assert torch.equal(back.scores.isnan(), torch.tensor([False, True, False]))


# -- numeric parameters of the analyses' Python APIs ------------------------------------------------------


def _trace(**kw):
    from circuits.tracing import trace

    return lambda model: trace(model, "The Eiffel Tower is located in the city of", "Eiffel Tower", samples=2, **kw)


def _massive(**kw):
    from interp.outliers.massive import massive_activations

    return lambda model: massive_activations(model, ["The Eiffel Tower is located in the city of"], **kw)


def _memit(**kw):
    from circuits.editing.memit import MEMITSettings, memit

    request = {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"}
    return lambda model: memit(model, [request], layers=[1], settings=MEMITSettings(**kw), progress=False)


def _values(**kw):
    from circuits.editing.optimize import ValueSettings

    return lambda model: ValueSettings(**kw)


@pytest.mark.parametrize("call, message", [
    (_trace(noise=INF), r"--noise must be a finite number above 0 \(got inf\)"),
    (_trace(noise=NAN), r"--noise must be a finite number above 0 \(got nan\)"),
    (_trace(noise_std=INF), r"--noise-std must be a finite number above 0 \(got inf\)"),
    (_massive(abs_threshold=INF), r"the magnitude threshold must be a finite number above 0"),
    (_massive(ratio_threshold=NAN), r"the ratio-to-median threshold must be a finite number of at least 1"),
    (_memit(mom2_update_weight=INF), r"mom2_update_weight must be a finite number of at least 0"),
    (_values(lr=NAN), r"ValueSettings.lr must be a finite number above 0"),
    (_values(kl_factor=INF), r"ValueSettings.kl_factor must be a finite number of at least 0"),
], ids=["trace-noise-inf", "trace-noise-nan", "trace-noise-std-inf", "massive-abs-inf", "massive-ratio-nan",
        "memit-lambda-inf", "values-lr-nan", "values-kl-inf"])
def test_analysis_apis_refuse_non_finite_numbers_before_any_work(tiny_llama, call, message):
    weights = {name: p.detach().clone() for name, p in tiny_llama.named_parameters()}
    with pytest.raises(InterpError, match=message) as e:
        call(tiny_llama)
    assert "\n" not in str(e.value)
    assert all(torch.equal(p, weights[name]) for name, p in tiny_llama.named_parameters())

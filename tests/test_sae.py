"""SAEs and transcoders: training mechanics on the tiny model, sae-lens round trips, resume, DDP,
bad input, evaluation, feature tables and transcoder attribution."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from sae_lens import SAE

from interp.errors import InterpError
from interp.sae import TrainConfig, load_sae, train
from interp.tokens import encode

ROOT = Path(__file__).resolve().parents[1]
RESID = "blocks.1.hook_resid_post"
LN2, MLP_OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
TEXT = """Return a new list containing all items from the iterable in ascending order. A custom key
function can be supplied to customize the sort order, and the reverse flag can be set."""


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(hook=RESID, arch="topk", k=8, width=256, tokens=4096, batch_tokens=128, lm_batch_size=8, seq_len=64,
                buffer_tokens=1024, norm_tokens=512, lr=1e-2, checkpoint_every=0, progress=False,
                sparsity_coefficient=0.3, model="tiny-llama")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained_sae(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "topk"
    train(tiny_llama, tiny_cfg(), out)
    return out


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
@pytest.mark.parametrize("transcoder", [False, True], ids=["sae", "transcoder"])
def test_every_architecture_trains_and_its_loss_falls(tiny_llama, tmp_path, arch, transcoder):
    hooks = dict(hook=LN2, hook_out=MLP_OUT) if transcoder else dict(hook=RESID)
    result = train(tiny_llama, tiny_cfg(arch=arch, **hooks), tmp_path / "out")
    mse = result.history["mse"]
    assert mse.iloc[-3:].mean() < 0.7 * mse.iloc[:3].mean()
    assert result.explained_variance > 0.3
    sae = load_sae(tmp_path / "out")
    expected = {("relu", False): "StandardSAE", ("topk", False): "TopKSAE", ("batchtopk", False): "JumpReLUSAE",
                ("jumprelu", False): "JumpReLUSAE", ("relu", True): "Transcoder", ("topk", True): "TopKTranscoder",
                ("batchtopk", True): "JumpReLUTranscoder", ("jumprelu", True): "JumpReLUTranscoder"}
    assert type(sae).__name__ == expected[(arch, transcoder)]


def test_saved_sae_loads_in_sae_lens_and_reconstructs_raw_activations(tiny_llama, trained_sae):
    cfg = json.loads((trained_sae / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["metadata"]["hook_name"] == RESID
    sae = SAE.load_from_disk(trained_sae)  # sae-lens's own loader, no interp code involved
    from interp.corpus import load_corpus, token_batches

    tokens = next(iter(token_batches(tiny_llama, load_corpus(), batch_size=4, seq_len=64)))  # its training text
    _, cache = tiny_llama.run_with_cache(tokens, names_filter=RESID)
    x = cache[RESID][:, 1:].reshape(-1, cache[RESID].shape[-1])
    recon = sae(x)  # normalization is folded in: raw activations in, raw reconstruction out
    ev = 1 - (recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev > 0.5
    resaved = trained_sae.parent / "resaved"
    sae.save_model(resaved)  # and what sae-lens writes, we load
    assert torch.equal(load_sae(resaved).W_dec, sae.W_dec)


def test_transcoder_loads_as_sae_lens_transcoder(tiny_llama, tmp_path):
    from sae_lens import JumpReLUTranscoder

    train(tiny_llama, tiny_cfg(arch="jumprelu", hook=LN2, hook_out=MLP_OUT), tmp_path / "tc")
    tc = SAE.load_from_disk(tmp_path / "tc")
    assert isinstance(tc, JumpReLUTranscoder) and tc.cfg.d_out == 64
    _, cache = tiny_llama.run_with_cache(encode(tiny_llama, TEXT), names_filter=lambda n: n in (LN2, MLP_OUT))
    x, y = cache[LN2][0, 1:], cache[MLP_OUT][0, 1:]
    ev = 1 - (tc(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert ev > 0.3


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same thread count as the killed subprocess, for bit-equal float sums
    yield
    torch.set_num_threads(threads)


def test_resume_after_kill_gives_the_weights_of_an_uninterrupted_run(tiny_llama, tmp_path, one_thread):
    from safetensors.torch import load_file

    args = ["sae", "train", "--model", "tiny-llama", "--hook", RESID, "--arch", "batchtopk", "--k", "8",
            "--width", "256", "--tokens", "24576", "--batch-tokens", "256", "--lr", "1e-2", "--seq-len", "64",
            "--lm-batch-size", "8", "--checkpoint-every", "2048"]
    cfg = TrainConfig(hook=RESID, arch="batchtopk", k=8, width=256, tokens=24576, batch_tokens=256, lr=1e-2, seq_len=64,
                      lm_batch_size=8, checkpoint_every=2048, model="tiny-llama", progress=False)
    killed_out = tmp_path / "killed"
    env = {**os.environ, "INTERP_THREADS": "1"}
    killed = subprocess.Popen([sys.executable, "-m", "interp", *args, "--out", str(killed_out)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((killed_out / "checkpoints").glob("step_*")) and time.time() < deadline and killed.poll() is None:
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert list((killed_out / "checkpoints").glob("step_*")), "no checkpoint was written before the kill"

    with pytest.raises(InterpError, match="--resume"):
        train(tiny_llama, cfg, killed_out)
    resumed = train(tiny_llama, cfg, killed_out, resume=True)
    assert resumed.resumed_from_step > 0
    train(tiny_llama, cfg, tmp_path / "whole")
    a = load_file(tmp_path / "whole" / "sae_weights.safetensors")
    b = load_file(killed_out / "sae_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_folder_from_another_config_is_refused_and_left_alone(tiny_llama, tmp_path, monkeypatch):
    from interp.sae import checkpoint

    original = checkpoint.save

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_llama, tiny_cfg(checkpoint_every=1024), out)
    monkeypatch.setattr(checkpoint, "save", original)
    saved = checkpoint.latest(out)
    before = {p: p.stat().st_mtime_ns for p in saved.iterdir()}
    with pytest.raises(InterpError, match=r"other settings \(k\)"):
        train(tiny_llama, tiny_cfg(checkpoint_every=1024, k=4), out, resume=True)
    assert {p: p.stat().st_mtime_ns for p in saved.iterdir()} == before


def test_ddp_with_two_gloo_processes_matches_one_process(tmp_path, tiny_llama):
    args = ["--standalone", "--nproc-per-node", "2", "-m", "interp", "sae", "train", "--model", "tiny-llama", "--hook", RESID,
            "--arch", "topk", "--k", "8", "--width", "256", "--tokens", "8192", "--batch-tokens", "256",
            "--lr", "1e-2", "--seq-len", "64", "--lm-batch-size", "4", "--out", str(tmp_path / "ddp"), "--json"]
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["processes"] == 2
    single = train(tiny_llama, tiny_cfg(width=256, lm_batch_size=4), tmp_path / "single")
    assert result["explained_variance"] > single.explained_variance - 0.1
    assert load_sae(tmp_path / "ddp").cfg.d_sae == 256


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]


def test_bad_input_is_one_line_exit_2(trained_sae, tmp_path, capsys):
    from interp.cli import main

    assert main(["sae", "train", "--model", "tiny-llama", "--hook", "blocks.1.hook_resid_pots", "--out", str(tmp_path / "x")]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "did you mean: blocks.1.hook_resid_post" in errors[0]
    assert not (tmp_path / "x").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cfg.json").write_text((trained_sae / "cfg.json").read_text())
    (broken / "sae_weights.safetensors").write_bytes((trained_sae / "sae_weights.safetensors").read_bytes()[:500])
    assert main(["sae", "eval", str(broken), "--model", "tiny-llama"]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "truncated" in errors[0]
    assert main(["sae", "train", "--model", "tiny-llama", "--hook", RESID, "--out", str(trained_sae)]) == 2
    assert "is not empty" in _error_lines(capsys)[0]  # refused before the model loads (interp.cli.outputs)


def test_sae_width_must_match_the_hook(tiny_gpt2, trained_sae):
    from interp.sae.evaluate import evaluate

    sae = load_sae(trained_sae)
    sae.cfg.metadata.hook_name = "blocks.1.mlp.hook_post"  # 256 wide in tiny-gpt2
    sae.cfg.metadata.model_name = None  # as an SAE from elsewhere: only the widths can be checked
    with pytest.raises(InterpError, match="64-wide"):
        evaluate(tiny_gpt2, sae, tokens=256)


def test_nan_activations_stop_training_before_any_checkpoint(tiny_llama, tmp_path):
    def poison(act, hook):
        return act * float("nan")

    tiny_llama.blocks[1].hook_resid_post.add_hook(poison)
    try:
        with pytest.raises(InterpError, match="NaN"):
            train(tiny_llama, tiny_cfg(checkpoint_every=256), tmp_path / "nan")
    finally:
        tiny_llama.reset_hooks()
    assert not (tmp_path / "nan" / "checkpoints").exists()


def test_evaluate_reports_the_sae_lens_metrics(tiny_llama, trained_sae):
    from interp.sae.evaluate import evaluate

    result = evaluate(tiny_llama, load_sae(trained_sae), tokens=1024, path=str(trained_sae), progress=False)
    assert result.l0 == pytest.approx(8.0)
    assert 0.5 < result.explained_variance <= 1 and 0.5 < result.cosine <= 1
    assert result.ce_loss_zero >= result.ce_loss_clean
    assert result.kl_sae < result.kl_zero
    assert result.density.shape == (256,) and 0 <= result.dead_fraction < 1
    assert set(result.to_frame()["metric"]) >= {"ce_loss_score", "kl_score", "dead_fraction", "dense_fraction"}


def test_massive_activation_tokens_are_left_out_of_training_and_evaluation(tiny_llama, tmp_path):
    from interp.sae.evaluate import evaluate

    def massive(act, hook):  # a massive activation at position 10 of every sequence, as real models have
        if act.shape[1] > 10:
            act[:, 10, 3] += 1000 * act.norm(dim=-1).median()
        return act

    with tiny_llama.hooks(fwd_hooks=[(RESID, massive)]):
        trained = train(tiny_llama, tiny_cfg(), tmp_path / "kept")
        plain = train(tiny_llama, tiny_cfg(outlier_ratio=0), tmp_path / "all")
        sae = load_sae(tmp_path / "kept")
        spiked = evaluate(tiny_llama, sae, tokens=1024, path=str(tmp_path / "kept"), progress=False)
        unfiltered = evaluate(tiny_llama, load_sae(tmp_path / "all"), tokens=1024, progress=False)
        same_tokens = evaluate(tiny_llama, load_sae(tmp_path / "all"), tokens=1024, progress=False,
                               limits=[sae.cfg.metadata.max_norm])
    clean = evaluate(tiny_llama, sae, tokens=1024, path=str(tmp_path / "kept"), progress=False)
    assert trained.outliers_left_out >= 4096 // 63 and plain.outliers_left_out == 0
    assert sae.cfg.metadata.max_norm == pytest.approx(json.loads((tmp_path / "kept" / "training.json").read_text())["norm_limits"][0])
    assert spiked.outliers_left_out == 1024 // 64 and clean.outliers_left_out == 0 and unfiltered.outliers_left_out == 0
    assert same_tokens.outliers_left_out == 1024 // 64 and same_tokens.tokens == spiked.tokens
    assert spiked.tokens == clean.tokens - 1024 // 64
    assert spiked.explained_variance == pytest.approx(clean.explained_variance, abs=0.03)  # the spike is not scored
    assert spiked.ce_loss_score > 0.5


def test_norm_limits_apply_to_each_part_of_a_transcoder_row():
    from interp.sae.activations import norm_medians, within_limits

    rows = torch.ones(5, 6)
    rows[1, :4] *= 100  # input part
    rows[3, 4:] *= 100  # target part
    assert torch.allclose(norm_medians(rows, 4), torch.tensor([2.0, 2**0.5], dtype=torch.float64))
    assert within_limits(rows, 4, [20.0, 14.0]).tolist() == [True, False, True, False, True]
    assert within_limits(rows, 4, [20.0]).tolist() == [True, False, True, True, True]
    assert within_limits(rows, 4, None).all()


def test_feature_tables_follow_the_dashboard_schema(tiny_llama, trained_sae, tmp_path):
    from interp.sae.features import feature_statistics

    result = feature_statistics(tiny_llama, load_sae(trained_sae), tmp_path / "ws", path=trained_sae, tokens=2048,
                                n_top=4, quantiles=2, per_quantile=2, progress=False)
    folder = Path(result.folder)
    meta = json.loads((folder / "sae.json").read_text())
    assert meta["schema"] == 1 and meta["d_sae"] == 256 and meta["hook"] == RESID
    features = pd.read_parquet(folder / "features.parquet")
    contexts = pd.read_parquet(folder / "contexts.parquet")
    assert list(features["feature"]) == list(range(256))
    assert {"density", "max_act", "top_logits", "bottom_logit_values", "hist_counts"} <= set(features.columns)
    assert list(contexts["feature"]) == sorted(contexts["feature"])
    top = contexts[(contexts["group"] == "top")]
    live = features[features["density"] > 0]
    first = top[top["feature"] == live["feature"].iloc[0]]
    assert first["acts"].map(max).iloc[0] == pytest.approx(live["max_act"].iloc[0], rel=1e-5)
    assert all(len(t) == len(a) for t, a in zip(contexts["tokens"], contexts["acts"]))
    assert (folder / "sae" / "cfg.json").is_file()


def test_transcoder_attribution_sums_to_the_pre_activation(tiny_llama):
    from sae_lens.saes.transcoder import Transcoder, TranscoderConfig

    from interp.sae.circuits import attribute, invariant_connections

    torch.manual_seed(0)
    transcoders = {}
    for layer in (0, 1):
        tc = Transcoder(TranscoderConfig(d_in=64, d_sae=32, d_out=64, apply_b_dec_to_input=False))
        tc.b_enc.data.fill_(0.5)  # so that features fire
        tc.b_dec.data.normal_()
        transcoders[layer] = tc.eval()
    result = attribute(tiny_llama, transcoders, "def f(x): return x", layer=1, feature=3, position=-1)
    rows = result.contributions
    assert result.contributions["attribution"].sum() + result.encoder_bias == pytest.approx(result.pre_activation, abs=1e-4)
    assert result.activation == pytest.approx(max(result.pre_activation, 0.0), abs=1e-5)
    features = rows[rows["source"] == "transcoder"]
    assert len(features) > 0 and (features["layer"] == 0).all()
    manual = transcoders[0].W_dec[features["feature"].iloc[0]] @ transcoders[1].W_enc[:, 3]
    assert features["input_invariant"].iloc[0] == pytest.approx(float(manual), rel=1e-5)
    assert set(rows["source"]) >= {"token", "attention", "transcoder", "output bias", "error"}
    connections = invariant_connections(transcoders[0], transcoders[1], feature=3, n=5)
    assert connections["input_invariant"].abs().is_monotonic_decreasing


@pytest.mark.real
def test_real_model_topk_sae_learns_and_loads_in_sae_lens(smollm, tmp_path):
    cfg = TrainConfig(hook="blocks.3.hook_resid_post", arch="topk", k=16, width=1024, tokens=8192, batch_tokens=128,
                      lm_batch_size=8, seq_len=64, buffer_tokens=1024, norm_tokens=512, lr=4e-3, checkpoint_every=0,
                      progress=False, model="smollm2-135m")
    result = train(smollm, cfg, tmp_path / "real")
    mse = result.history["mse"]  # medians: a few massive-activation tokens make single batches noisy
    assert mse.iloc[-8:].median() < 0.6 * mse.iloc[:8].median()
    sae = SAE.load_from_disk(tmp_path / "real")
    assert sae.cfg.d_in == 576 and sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"


def test_auxk_revives_latents_that_never_win_the_top_k(tiny_llama, tmp_path):
    """With a dead window shorter than the run AuxK trains the silent latents, and fewer stay silent than
    with a window the run never reaches (where AuxK never starts)."""
    from safetensors.torch import load_file

    from interp.sae.io import SPARSITY_FILE

    never_fired = {}
    for window in (256, 10**9):
        out = tmp_path / str(window)
        train(tiny_llama, tiny_cfg(hook=LN2, hook_out=MLP_OUT, width=512, tokens=8192, dead_window_tokens=window), out)
        never_fired[window] = int((load_file(str(out / SPARSITY_FILE))["sparsity"] < -9).sum())
    assert never_fired[10**9] > 0, "the test needs latents that never fire without AuxK"
    assert never_fired[256] < 0.5 * never_fired[10**9], never_fired


def test_dead_window_reaches_the_training_config(tmp_path, monkeypatch):
    from interp.cli import main

    seen = {}

    def fake_train(model, cfg, out, **kw):
        seen["window"] = cfg.dead_window_tokens
        raise InterpError("stop here")

    monkeypatch.setattr("interp.sae.train", fake_train)
    assert main(["sae", "train", "--model", "tiny-llama", "--hook", RESID, "--dead-window-tokens", "4096",
                 "--tokens", "256", "--out", str(tmp_path / "x")]) == 2
    assert seen == {"window": 4096}

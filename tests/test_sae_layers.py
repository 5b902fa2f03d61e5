"""Many SAEs from one model pass (`interp sae train --layers` / sweeps) and set evaluation, on tiny-llama:
members equal their own single runs, resume is exact, the sparse TopK step equals sae-lens's dense one,
and the set's replacement-model score equals a plain spliced run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sae_lens import SAE

from interp.errors import InterpError
from interp.sae import TrainConfig, layer_configs, load_sae, train, train_set

ROOT = Path(__file__).resolve().parents[1]
LN2, MLP_OUT = "blocks.{l}.ln2.hook_normalized", "blocks.{l}.hook_mlp_out"
SMALL = dict(arch="topk", k=8, width=256, tokens=4096, batch_tokens=128, lm_batch_size=8, seq_len=64,
             buffer_tokens=1024, norm_tokens=512, lr=1e-2, checkpoint_every=0, progress=False, model="tiny-llama")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "sae_weights.safetensors")


def massive(act, hook):
    """Massive activations at positions 10-39 of every sequence (real models have a few): a member reading
    this hook leaves those tokens out, the others keep them."""
    act[:, 10:40, 3] += 1000 * act.norm(dim=-1).median()
    return act


@pytest.fixture(scope="module")
def tiny_set(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("set") / "tc"
    train_set(tiny_llama, layer_configs([0, 1, 2], hook=LN2, hook_out=MLP_OUT, **SMALL), out)
    return out


def test_members_equal_their_own_single_runs_bit_for_bit(tiny_llama, tmp_path):
    members = layer_configs([0, 2], hook=LN2, hook_out=MLP_OUT, **SMALL)
    members["k-4"] = TrainConfig(**{**SMALL, "hook": "blocks.1.hook_resid_post", "k": 4, "seed": 3})  # an SAE beside them
    with tiny_llama.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", massive)]):
        result = train_set(tiny_llama, members, tmp_path / "set")
        for name, cfg in members.items():
            train(tiny_llama, cfg, tmp_path / "single" / name)
    frame = result.to_frame().set_index("name")
    assert list(frame.index) == ["layer-00", "layer-02", "k-4"]
    assert frame.loc["k-4", "outliers_left_out"] > 0 and frame.loc["layer-00", "outliers_left_out"] == 0
    for name in members:
        a, b = weights(tmp_path / "set" / name), weights(tmp_path / "single" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_layers_all_writes_one_sae_lens_folder_per_layer(tiny_llama, tmp_path):
    from interp.cli import main

    out = tmp_path / "tc"
    args = ["sae", "train", "--model", "tiny-llama", "--hook", LN2, "--hook-out", MLP_OUT, "--layers", "all",
            "--k", "8", "--width", "128", "--tokens", "1024", "--batch-tokens", "128", "--seq-len", "64",
            "--lm-batch-size", "8", "--buffer-tokens", "512", "--out", str(out), "--json"]
    assert main(args) == 0
    listing = json.loads((out / "set.json").read_text())
    assert [m["name"] for m in listing["members"]] == ["layer-00", "layer-01", "layer-02"]
    for layer, member in enumerate(listing["members"]):
        assert member["layer"] == layer and member["hook_out"] == f"blocks.{layer}.hook_mlp_out"
        sae = SAE.load_from_disk(out / member["name"])  # sae-lens's own loader
        assert type(sae).__name__ == "TopKTranscoder" and sae.cfg.d_sae == 128
        assert sae.cfg.metadata.hook_name == f"blocks.{layer}.ln2.hook_normalized"
        assert sae.cfg.metadata.hook_name_out == f"blocks.{layer}.hook_mlp_out"


def test_sweep_over_k_trains_one_member_per_value(tiny_llama, tmp_path, capsys):
    from interp.cli import main

    out = tmp_path / "sweep"
    assert main(["sae", "train", "--model", "tiny-llama", "--hook", "blocks.1.hook_resid_post", "--k", "2,4",
                 "--width", "64", "--tokens", "512", "--batch-tokens", "128", "--seq-len", "64", "--buffer-tokens", "512",
                 "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in result["members"]] == ["k-2", "k-4"]
    assert result["steady_tokens_per_s"] > 0 and result["tokens_per_s"] > 0
    assert [load_sae(out / f"k-{k}").cfg.k for k in (2, 4)] == [2, 4]


@pytest.mark.parametrize("world", [1, 2])
def test_long_run_rate_adds_the_source_cost_per_token_to_the_step_cost_per_trained_token(world):
    from types import SimpleNamespace

    from interp.sae.train import RunTiming

    rows = SimpleNamespace(source_seconds=2.0, source_tokens=4000)  # this process's model passes
    timing = RunTiming.measure(tokens=1000, seconds=10.0, step_seconds=3.0, rows=rows, world=world)
    assert timing.seconds == 10.0 and timing.tokens_per_s == 100.0
    per_token = 2.0 / 4000 + 3.0 / (1000 / world)  # each process trains its share of the tokens
    assert timing.steady_tokens_per_s == pytest.approx(world / per_token)


def test_resume_continues_every_member_exactly(tiny_llama, tmp_path, monkeypatch):
    from interp.sae import checkpoint

    members = layer_configs([0, 1], hook=LN2, hook_out=MLP_OUT, **{**SMALL, "checkpoint_every": 1536})
    original = checkpoint.save

    def save_then_die(*args):
        original(*args)
        raise KeyboardInterrupt

    with tiny_llama.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", massive)]):
        monkeypatch.setattr(checkpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_set(tiny_llama, members, tmp_path / "killed")
        monkeypatch.setattr(checkpoint, "save", original)
        with pytest.raises(InterpError, match="--resume"):
            train_set(tiny_llama, members, tmp_path / "killed")
        with pytest.raises(InterpError, match="other members"):
            train_set(tiny_llama, dict(list(members.items())[:1]), tmp_path / "killed", resume=True)
        resumed = train_set(tiny_llama, members, tmp_path / "killed", resume=True)
        train_set(tiny_llama, members, tmp_path / "whole")
    assert resumed.resumed_from_step == 12
    left_out = resumed.members.set_index("name")["outliers_left_out"]
    assert left_out["layer-01"] > 0 and left_out["layer-00"] == 0  # each member its own outliers
    for name in members:
        a, b = weights(tmp_path / "whole" / name), weights(tmp_path / "killed" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not (tmp_path / "killed" / "checkpoints").exists()


def test_ddp_with_two_gloo_processes_trains_every_member(tmp_path, tiny_llama):
    args = ["--standalone", "--nproc-per-node", "2", "-m", "interp", "sae", "train", "--model", "tiny-llama", "--hook", LN2,
            "--hook-out", MLP_OUT, "--layers", "0,2", "--k", "8", "--width", "256", "--tokens", "8192",
            "--batch-tokens", "256", "--lr", "1e-2", "--seq-len", "64", "--lm-batch-size", "4",
            "--out", str(tmp_path / "ddp"), "--json"]
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["processes"] == 2 and [m["name"] for m in result["members"]] == ["layer-00", "layer-02"]
    single = train_set(tiny_llama, layer_configs([0, 2], hook=LN2, hook_out=MLP_OUT,
                                                 **{**SMALL, "tokens": 8192, "lm_batch_size": 4}), tmp_path / "one")
    for ddp, one in zip(result["members"], single.members.to_dict("records")):
        assert ddp["explained_variance"] > one["explained_variance"] - 0.1
        assert load_sae(tmp_path / "ddp" / ddp["name"]).cfg.d_sae == 256


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
@pytest.mark.parametrize("transcoder", [False, True], ids=["sae", "transcoder"])
@pytest.mark.parametrize("dead_share", [0.0, 0.05, 0.5, 0.9])
def test_sparse_topk_step_equals_sae_lens_dense_step(transcoder, dead_share, device):
    from sae_lens import TopKTrainingSAE
    from sae_lens.saes.sae import TrainStepInput

    from interp.sae.build import training_sae

    hooks = dict(hook="blocks.1.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out") if transcoder else dict(hook="x")
    sae = training_sae(TrainConfig(**hooks, k=8, width=256, device=device), 64, 64 if transcoder else None, {})
    torch.manual_seed(0)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    step = TrainStepInput(sae_in=torch.randn(100, 128 if transcoder else 64, device=device), coefficients={},
                          dead_neuron_mask=torch.rand(256, device=device) < dead_share, n_training_steps=0,
                          is_logging_step=False)
    runs = []
    for forward in (sae.training_forward_pass, lambda s: TopKTrainingSAE.training_forward_pass(sae, s)):
        out = forward(step)
        out.loss.backward()
        runs.append((out, {n: p.grad.clone() for n, p in sae.named_parameters()}))
        sae.zero_grad()
    (ours, ours_grads), (dense, dense_grads) = runs
    assert torch.equal(ours.feature_acts.to_dense(), dense.feature_acts)
    assert float(ours.loss) == pytest.approx(float(dense.loss), rel=1e-6)
    for name, grad in dense_grads.items():
        assert torch.allclose(ours_grads[name], grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max())), name


@pytest.mark.parametrize("shape, k", [((300, 2304), 32), ((7, 256), 8), ((5, 64), 16), ((3, 100), 4)])
def test_top_k_picks_the_columns_torch_topk_picks(shape, k):
    from interp.sae.topk import top_k

    hidden = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    hidden[0, :] = hidden[0, :].abs() * -1  # a row of negatives
    hidden[1, : shape[1] // 8] += 10  # a row whose top k all lie in one run of columns
    expected = hidden.topk(k, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(top_k(hidden, k).sort(dim=-1).values, expected)


def test_row_norms_backward_equals_torch_norm_backward_zero_rows_included():
    from interp.sae.topk import _RowNorms

    w = torch.randn(6, 5)
    w[2] = 0
    grad = torch.randn(6)
    grads = []
    for norms in (_RowNorms.apply, lambda t: t.norm(dim=-1)):
        leaf = w.clone().requires_grad_()
        norms(leaf).backward(grad)
        grads.append(leaf.grad)
    assert torch.allclose(*grads) and torch.equal(_RowNorms.apply(w), w.norm(dim=-1))
    assert torch.equal(grads[0][2], torch.zeros(5))


def test_encoder_product_equals_addmm_to_rounding():
    from interp.sae.topk import encode

    w_storage, b = torch.randn(256, 64), torch.randn(256)
    x = torch.randn(100, 128)[:, :64]  # a transcoder's input half of its packed rows
    assert torch.allclose(encode(x, w_storage.T, b), torch.addmm(b, x, w_storage.T), rtol=1e-5, atol=1e-5)
    assert torch.allclose(encode(x, w_storage.T.contiguous(), b), torch.addmm(b, x, w_storage.T), rtol=1e-5, atol=1e-5)


def test_trainer_steps_update_every_weight_as_plain_adam_on_sae_lens_dense_steps():
    """The trainer's Adam runs on contiguous views of W_enc's latent-major storage: the weights it gives after
    three steps are those of sae-lens's dense step and unfused Adam on an ordinary copy of the SAE."""
    import copy

    from sae_lens import TopKTrainingSAE
    from sae_lens.saes.sae import TrainStepInput

    from interp.sae.train import Trainer, lr_at

    cfg = TrainConfig(hook="blocks.1.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out", k=8, width=256,
                      tokens=4096, batch_tokens=128, lr=1e-2, dead_window_tokens=10**9)
    trainer = Trainer(cfg, 64, 64, {})
    trainer.scale_in = trainer.scale_out = 1.0
    assert trainer.sae.W_enc.stride() == (1, 64)  # latent-major
    initial = {name: p.detach().clone() for name, p in trainer.sae.named_parameters()}
    ref = copy.deepcopy(trainer.sae)
    ref.W_enc = torch.nn.Parameter(ref.W_enc.detach().contiguous())
    adam = torch.optim.Adam(ref.parameters(), lr=cfg.lr, fused=False)
    torch.manual_seed(0)
    norms = []
    for step in range(3):
        x = torch.randn(128, 128)
        trainer._step(x, log=False)
        trainer.step += 1
        out = TopKTrainingSAE.training_forward_pass(ref, TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=torch.zeros(256, dtype=torch.bool), n_training_steps=step,
            is_logging_step=False))
        out.loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)))
        adam.param_groups[0]["lr"] = lr_at(cfg, step)
        adam.step()
        adam.zero_grad()
    for name, p in ref.named_parameters():
        ours = dict(trainer.sae.named_parameters())[name]
        assert not torch.equal(ours, initial[name]), name
        assert torch.allclose(ours, p, rtol=1e-4, atol=1e-5), name
    assert min(norms) > 1  # every step clipped (inside fused Adam, ours)


def test_a_checkpoint_whose_adam_moments_do_not_fit_the_parameters_is_refused():
    """Moments saved for W_enc in another layout (an earlier version) would update it silently wrong."""
    from interp.sae.train import Trainer

    cfg = TrainConfig(hook="blocks.1.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out", k=8, width=256,
                      tokens=4096, batch_tokens=128)
    trainer = Trainer(cfg, 64, 64, {})
    trainer.scale_in = trainer.scale_out = 1.0
    trainer._step(torch.randn(128, 128), log=False)
    tensors, meta = trainer.state()
    Trainer(cfg, 64, 64, {}).load_state(tensors, meta)  # its own state loads
    moment = next(k for k, v in tensors.items() if k.startswith("optim.") and v.shape == (256, 64))
    tensors[moment] = tensors[moment].T.contiguous()
    with pytest.raises(InterpError, match="new --out"):
        Trainer(cfg, 64, 64, {}).load_state(tensors, meta)


def test_set_eval_scores_each_member_as_alone_and_the_replacement_model(tiny_llama, tiny_set):
    from interp.sae.evaluate import evaluate, evaluate_set

    result = evaluate_set(tiny_llama, tiny_set, tokens=1024, progress=False)
    frame = result.to_frame().set_index("name")
    assert list(frame.index) == ["layer-00", "layer-01", "layer-02"] and list(frame["layer"]) == [0, 1, 2]
    for name in frame.index:
        alone = evaluate(tiny_llama, load_sae(tiny_set / name), tokens=1024, path=str(tiny_set / name), progress=False)
        for metric in ("l0", "explained_variance", "ce_loss_clean", "ce_loss_sae", "ce_loss_zero", "kl_sae"):
            assert frame.loc[name, metric] == pytest.approx(getattr(alone, metric), rel=1e-5, abs=1e-7), (name, metric)
        assert torch.equal(result.densities[name], alone.density)
    r = result.replacement
    assert r["layers"] == [0, 1, 2] and r["ce_loss_clean"] == pytest.approx(frame["ce_loss_clean"].iloc[0])
    assert r["ce_loss_replaced"] == pytest.approx(_replaced_ce(tiny_llama, tiny_set, 1024), rel=1e-5)
    assert r["ce_loss_score"] == pytest.approx((r["ce_loss_zero"] - r["ce_loss_replaced"]) / (r["ce_loss_zero"] - r["ce_loss_clean"]))
    assert "keep the model's own output" in result.summary()


def _replaced_ce(model, folder: Path, tokens: int) -> float:
    """The reference: a plain run from the tokens with every transcoder computing its layer's MLP output from
    its own input in that run, token by token (the first position and the tokens over its norm limits in the
    clean run keep the MLP), mean next-token CE."""
    from interp.corpus import load_corpus, token_batches
    from interp.sae.activations import sae_limits, within_limits
    from interp.sae.evaluate import held_out

    saes = {layer: load_sae(folder / f"layer-{layer:02d}") for layer in range(3)}
    losses = []
    for batch in token_batches(model, held_out(load_corpus()), 8, 64, max_tokens=tokens):
        _, clean = model.run_with_cache(batch)
        inputs = {}

        def read(act, hook, layer):
            inputs[layer] = act

        def write(act, hook, layer):
            out = act.clone()
            for b in range(act.shape[0]):
                for t in range(1, act.shape[1]):
                    x, y = (clean[h.format(l=layer)][b, t] for h in (LN2, MLP_OUT))
                    if within_limits(torch.cat([x, y])[None], x.numel(), sae_limits(saes[layer]))[0]:
                        out[b, t] = saes[layer](inputs[layer][b, t][None])[0]
            return out

        hooks = [(f"blocks.{layer}.ln2.hook_normalized", lambda a, hook, layer=layer: read(a, hook, layer))
                 for layer in saes] + [(f"blocks.{layer}.hook_mlp_out", lambda a, hook, layer=layer: write(a, hook, layer))
                                       for layer in saes]
        with torch.no_grad():
            logits = model.run_with_hooks(batch, fwd_hooks=hooks)
        logp = logits[:, 1:-1].log_softmax(-1)
        losses.append(-logp.gather(-1, batch[:, 2:, None])[..., 0].flatten())
    return float(torch.cat(losses).double().mean())


def test_set_eval_cli_prints_a_row_per_member_and_the_replacement_score(tiny_set, capsys):
    from interp.cli import main

    assert main(["sae", "eval", str(tiny_set), "--model", "tiny-llama", "--tokens", "512", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "sae_set_eval" and len(result["members"]) == 3
    assert "ce_loss_score" in result["replacement"] and "own output" in result["replacement"]["note"]


@pytest.mark.parametrize("args, message", [
    (["--hook", LN2, "--hook-out", MLP_OUT], "is a template; pass --layers"),
    (["--hook", "blocks.1.ln2.hook_normalized", "--hook-out", "blocks.1.hook_mlp_out", "--layers", "all"],
     "--layers needs {l}"),
    (["--hook", LN2, "--layers", "0,1", "--k", "2,4"], "do not combine"),
    (["--hook", LN2, "--layers", "0-7"], "out of range"),
])
def test_template_and_layers_errors_are_one_line_exit_2(tmp_path, capsys, args, message):
    from interp.cli import main

    assert main(["sae", "train", "--model", "tiny-llama", *args, "--tokens", "512", "--out", str(tmp_path / "x")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "x").exists()


def test_members_must_share_the_data_stream(tiny_llama, tmp_path):
    members = layer_configs([0, 1], hook=LN2, hook_out=MLP_OUT, **SMALL)
    members["layer-01"] = TrainConfig(**{**SMALL, "hook": "blocks.1.ln2.hook_normalized",
                                         "hook_out": "blocks.1.hook_mlp_out", "batch_tokens": 256})
    with pytest.raises(InterpError, match="differ in batch_tokens"):
        train_set(tiny_llama, members, tmp_path / "x")

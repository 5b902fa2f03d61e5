"""A workspace with one saved result of every kind, each made by its own analysis on a tiny model in
a few seconds: for the dashboard's tests, and for trying the dashboard without a real model.

    python -m dashboards.sample WS && interp dashboard --workspace WS --model tiny-llama

Text a page shows verbatim (the edit's generations, the lens prompt) carries `MARKUP`, so tests can
check that it stays text. Settings are the smallest that still exercise each analysis; the numbers
mean nothing on a random model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dashboards.synthetic import HOSTILE_TOKEN
from interp.results import Result

MARKUP = HOSTILE_TOKEN
PROMPT, SUBJECT = "The Eiffel Tower is in Paris", "Eiffel"
FACTS = [("{} is in", "The Eiffel Tower"), ("{} was born in", "Mozart"), ("{} speaks", "Danielle Darrieux"),
         ("{} was founded by", "Apple")]
RESID = "blocks.1.hook_resid_post"
ATTN_Z = "blocks.1.attn.hook_z"


def write_sample_workspace(workspace: str | Path, model, name: str = "sample") -> dict[str, Path]:
    """Run every analysis cheaply on `model` (tiny-llama: 3 layers, d_model 64) and save each result
    into `workspace` as `<kind>/<name>`; return {kind: folder}."""
    ws = Path(workspace)
    ws.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model's matmuls only lose from more threads (10x slower on a busy machine)
    try:
        results = [*_basics(model), *_circuits(model, ws), _edit(model), *_probes(model, ws), _steer(model),
                   *_outliers(model), _microscope(model), *_sae(model, ws, name)]
        results += _ffn(model)
    finally:
        torch.set_num_threads(threads)
    return {r.kind: r.save(ws, name) for r in results}


def _basics(model) -> list[Result]:
    from dashboards.attention import attention_patterns
    from interp.info import model_info
    from interp.lens import logit_lens

    return [model_info(model), logit_lens(model, f"Hi {MARKUP} there"),
            attention_patterns(model, "The cat sat on the mat because it was warm.")]


def _circuits(model, ws: Path) -> list[Result]:
    from circuits.knockout import knockout
    from circuits.patching import patch
    from circuits.trace_study import trace_facts
    from circuits.tracing import trace

    records = []
    for i, (prompt, subject) in enumerate(FACTS):  # the model's own answers, so that it "knows" them
        tokens = model.to_tokens(prompt.replace("{}", subject), prepend_bos=False)
        answer = model.tokenizer.decode([int(model(tokens)[0, -1].argmax())])
        records.append({"case_id": i, "requested_rewrite": {"prompt": prompt, "subject": subject,
                                                            "target_true": {"str": answer}}})
    facts = ws / ".sample-facts.jsonl"
    facts.write_text("\n".join(json.dumps(r) for r in records))
    return [trace(model, PROMPT, SUBJECT, samples=2, noise_std=1.0, window=2, progress=False),
            trace_facts(model, str(facts), samples=2, noise_std=1.0, window=2),
            knockout(model, PROMPT, SUBJECT, window=3),
            patch(model, "The cat sat on", "The cot sat on")]


def _edit(model) -> Result:
    from circuits.editing import ROMESettings, edit_and_evaluate
    from circuits.editing.optimize import ValueSettings

    request = {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome",
               "case_id": 0, "generation_prompts": [f"{MARKUP} The Eiffel Tower"]}
    settings = ROMESettings(values=ValueSettings(steps=5), context_lengths=((5, 5),), stats_tokens=4096)
    result, handle = edit_and_evaluate(model, request, "rome", layers=[1], gen_tokens=12, settings=settings,
                                       progress=False)
    handle.undo()
    return result


def _probes(model, ws: Path) -> list[Result]:
    from probes.checkpoints import probe_checkpoints
    from probes.collect import collect_activations
    from probes.datasets import load_dataset
    from probes.steering import steer
    from probes.sweep import sweep
    from probes.trajectory import TrajectoryConfig, trajectory

    data = load_dataset("larger_than").subset(range(80))
    layers = list(range(model.cfg.n_layers))
    acts = collect_activations(model, data.texts, layers, progress=False)
    spec = str(model.cfg.spec)
    return [sweep(acts, data, layers, ["logistic", "mass-mean"], folds=3, model=spec, progress=False),
            steer(model, data, [1], n_eval=10, shots=2, answers=("A", "B"), suffix=" Then:", workspace=ws),
            trajectory(acts, data, layers, TrajectoryConfig(folds=3), model=spec, progress=False),
            probe_checkpoints([spec], data, folds=3, progress=False)]


def _steer(model) -> Result:
    from interp.hooks import resid_post
    from interp.steering import SteeringVector, steer
    from interp.steering.vectors import caa_vector
    from probes.datasets import load_dataset

    data = load_dataset("sentiment").subset(range(0, 400, 10))  # 20 positive, 20 negative
    vector, behaviour = caa_vector(model, data, 1)
    return steer(model, SteeringVector(vector, resid_post(1), "dataset:sentiment (40 rows)", behaviour),
                 coefs=[0, 40], prompt=f"{MARKUP} The movie was", max_new_tokens=4, neutral=2, progress=False)


def _outliers(model) -> list[Result]:
    import tempfile

    from interp.outliers import analyze_outliers
    from interp.outliers.checkpoints import TrainConfig, across_checkpoints, train_checkpoints
    from interp.outliers.dormant import domain_sinks
    from interp.outliers.dynamics import massive_dynamics

    texts = ["A shorter prompt.", "Quietly, the small cat sat on a warm mat; then it slept until noon."]
    analysis = analyze_outliers(model, texts, ppl_tokens=128, seq_len=64)
    domains = domain_sinks(model, max_tokens=64, batch_size=2, seq_len=32)
    with tempfile.TemporaryDirectory() as tmp:  # seven checkpoints of a 2-layer Llama, six steps apart
        cfg = TrainConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_mlp=64, seq_len=32, batch_size=2,
                          lr=1e-2, warmup=1)
        train_checkpoints(tmp, steps=6, save_every=1, config=cfg)
        checkpoints = across_checkpoints(tmp, max_tokens=64, batch_size=2, seq_len=32, ppl_tokens=64)
    return [*analysis.results(), domains, checkpoints, massive_dynamics(checkpoints)]


def _microscope(model) -> Result:
    """A corpus run (so the page has its removal table) on a tiny reference sample, read-out trained 10 steps."""
    from interp.microscope import MicroscopeConfig, microscope
    from interp.microscope.memory import MemoryConfig

    config = MicroscopeConfig(reference_tokens=256, corpus_tokens=128, seq_len=64, id_points=128,
                              memory=MemoryConfig(window=4, steps=10, batch=32))
    return microscope(model, corpus=None, source=f"{MARKUP} built-in prose", config=config)


def _ffn(model) -> list[Result]:
    """The sub-updates of every layer at the last token, and the neuron table (in the workspace, so the ffn
    page's search box has a table to search)."""
    from interp.ffn import ffn_updates, neuron_table

    return [ffn_updates(model, f"{MARKUP} The Eiffel Tower is in", top=4, n_tokens=4), neuron_table(model, progress=False)]


def _sae(model, ws: Path, name: str) -> list[Result]:
    from circuits.graph import GraphConfig, graph
    from interp.sae import TrainConfig, load_sae, train
    from interp.sae.cache import cache_activations
    from interp.sae.train import train_set
    from interp.sae.circuits import attribute
    from interp.sae.evaluate import evaluate, evaluate_set
    from interp.sae.features import feature_statistics

    small = dict(arch="topk", k=8, width=256, tokens=4096, batch_tokens=128, lm_batch_size=8, seq_len=64,
                 buffer_tokens=1024, norm_tokens=512, lr=1e-2, checkpoint_every=0, progress=False)
    root = ws / ".sample-sae"
    trained = train(model, TrainConfig(hook=RESID, **small), root / "sae")
    sae = load_sae(root / "sae")
    members = {f"layer-{layer:02d}": TrainConfig(hook=f"blocks.{layer}.ln2.hook_normalized",
                                                  hook_out=f"blocks.{layer}.hook_mlp_out", **small)
               for layer in (0, 1)}  # a transcoder set: one folder per layer, one model pass
    set_trained = train_set(model, members, root / "transcoders")
    transcoders = {layer: load_sae(root / "transcoders" / f"layer-{layer:02d}") for layer in (0, 1)}
    prompt = "def f(x): return x"
    _, cache = model.run_with_cache(model.to_tokens(prompt, prepend_bos=False), names_filter=lambda n: "ln2" in n)
    with torch.no_grad():
        feature = int(transcoders[1].encode(cache["blocks.1.ln2.hook_normalized"][0, -1:])[0].argmax())
    return [trained, evaluate(model, sae, tokens=1024, path=str(root / "sae"), progress=False),
            feature_statistics(model, sae, ws, path=root / "sae", name=name, tokens=2048, n_top=4, quantiles=2,
                               per_quantile=2, progress=False),
            attribute(model, transcoders, prompt, layer=1, feature=feature),
            graph(model, prompt, root / "transcoders", GraphConfig(node_threshold=1.0)),
            set_trained, evaluate_set(model, root / "transcoders", tokens=512, progress=False),
            _attention_sae(model, ws, root / "attn", f"{name}-attn", small),
            cache_activations(model, [RESID], root / "cache", tokens=1024, seq_len=64, batch_size=8, progress=False)]


def _attention_sae(model, ws: Path, folder: Path, name: str, small: dict) -> Result:
    """An attention-output SAE (heads concatenated at hook_z): its feature set `name` (head shares and
    per-source attribution on the feature pages) and the attribution of one activation."""
    from interp.sae import TrainConfig, load_sae, train
    from interp.sae.attention import attribute_feature
    from interp.sae.features import feature_statistics

    train(model, TrainConfig(hook=ATTN_Z, **small), folder)
    sae = load_sae(folder)
    stats = feature_statistics(model, sae, ws, path=folder, name=name, tokens=2048, n_top=4, quantiles=2,
                               per_quantile=2, progress=False)
    busiest = int(stats.densest["feature"].iloc[0])
    return attribute_feature(model, sae, f"{MARKUP} The cat sat on the mat", busiest, path=str(folder))


def main(argv: list[str] | None = None) -> None:
    """`python -m dashboards.sample WS`: write the sample workspace (tiny-llama) into WS."""
    from interp.models import load_model

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m dashboards.sample WORKSPACE")
    for kind, folder in write_sample_workspace(args[0], load_model("tiny-llama")).items():
        print(f"{kind:>24}  {folder}")


if __name__ == "__main__":
    main()

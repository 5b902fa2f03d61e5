"""Cost of steering during generation on the default model, measured in one run.

Plain greedy generation and generation inside `interp.steering.steering` (a random vector at a middle
layer's `hook_resid_post`, coefficient 4, each positions mode) take turns, round after round, so a change
in machine load hits every case alike; each case's time is its best round. Every case generates the same
number of new tokens from the same prompt with the key/value cache (no early stop at end-of-sequence).
Goal: steered / plain <= 1.1.

    python benchmarks/steering.py [--new-tokens 64] [--repeats 5] [--layer 15]
"""

from __future__ import annotations

import argparse
import json
import time

GOAL = 1.1
PROMPT = "I watched the film yesterday. Honestly, it was"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layer", type=int, default=15)
    args = parser.parse_args()

    import torch

    from interp.hooks import resid_post
    from interp.models import load_model
    from interp.steering import steering

    model = load_model("smollm2-135m")
    tokens = model.to_tokens(PROMPT, prepend_bos=False)
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    vector *= 30.0 / vector.norm()  # the size of the sentiment vector at layer 15

    def generate():
        return model.generate(tokens, max_new_tokens=args.new_tokens, do_sample=False, use_past_kv_cache=True,
                              verbose=False, stop_at_eos=False)

    def steered(positions: str):
        def call():
            with steering(model, vector, resid_post(args.layer), 4.0, positions):
                return generate()
        return call

    cases = {"plain": generate, **{f"steered_{p}": steered(p) for p in ("all", "prompt", "last")}}
    best = dict.fromkeys(cases, float("inf"))
    lengths = {}
    with torch.no_grad():
        for case, call in cases.items():  # warm-up, and every case makes as many tokens
            lengths[case] = call().shape[1]
        for _ in range(args.repeats):
            for case, call in cases.items():
                start = time.perf_counter()
                call()
                best[case] = min(best[case], time.perf_counter() - start)
    assert len(set(lengths.values())) == 1, lengths
    ratios = {case: best[case] / best["plain"] for case in cases if case != "plain"}
    report = {"new_tokens": args.new_tokens, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "seconds": best, "tokens_per_s": {c: args.new_tokens / s for c, s in best.items()},
              "ratio_steered_over_plain": ratios, "goal": GOAL, "met": all(r <= GOAL for r in ratios.values())}
    print(json.dumps(report, indent=1))
    for case, ratio in ratios.items():
        print(f"{case}: {ratio:.3f}x plain generation ({'within' if ratio <= GOAL else 'OVER'} the {GOAL}x goal)")


if __name__ == "__main__":
    main()

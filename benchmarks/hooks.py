"""Cost of the hooked model on the default model, measured in one run.

Forward timings come from one process that takes turns between the plain Hugging Face model and
each hooked case, round after round, so a change in machine load hits every case alike; each case's
time is its best round. Peak memory (max RSS) and load times come from one subprocess per case.

    python benchmarks/hooks.py [--batch 8] [--seq 128] [--repeats 5] [--skip-cold]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

FORWARDS = ("hf_forward", "hooked_forward", "cache_resid", "cache_all")
CASES = (*FORWARDS, "load_cached", "load_cold")
GOALS = {"hooked_forward": 1.05, "cache_resid": 1.3}


def _forward_call(case: str, tokens, models: dict):
    """The call that `case` times; loads (and keeps in `models`) only the model it needs."""
    from interp.models import load_hf_model, load_model

    if case == "hf_forward":
        if "hf" not in models:
            models["hf"] = load_hf_model("smollm2-135m")[0]
        hf = models["hf"]
        return lambda: hf(tokens)
    if "hooked" not in models:
        models["hooked"] = load_model("smollm2-135m")
    model = models["hooked"]
    if case == "hooked_forward":
        return lambda: model(tokens)
    if case == "cache_resid":
        return lambda: model.run_with_cache(tokens, names_filter=lambda n: "hook_resid_" in n)
    return lambda: model.run_with_cache(tokens)


def _tokens(batch: int, seq: int):
    import torch

    return torch.randint(0, 49152, (batch, seq), generator=torch.Generator().manual_seed(0))


def time_forwards(batch: int, seq: int, repeats: int) -> dict:
    """Best-of-`repeats` seconds per forward case, the cases interleaved within each round."""
    import torch

    tokens, models = _tokens(batch, seq), {}
    calls = {case: _forward_call(case, tokens, models) for case in FORWARDS}
    best = dict.fromkeys(calls, float("inf"))
    with torch.no_grad():
        for call in calls.values():  # warm-up
            call()
        for _ in range(repeats):
            for case, call in calls.items():
                start = time.perf_counter()
                call()
                best[case] = min(best[case], time.perf_counter() - start)
    return {case: {"seconds": s, "tokens_per_s": batch * seq / s} for case, s in best.items()}


def run_case(case: str, batch: int, seq: int) -> dict:
    """One case alone in its own process: its peak memory, and for loads their time."""
    import torch

    start = time.perf_counter()
    if case.startswith("load"):
        from interp.models import load_model

        load_model("smollm2-135m")
        return {"seconds": time.perf_counter() - start}
    with torch.no_grad():
        _forward_call(case, _tokens(batch, seq), {})()
    return {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold (GGUF conversion) load")
    parser.add_argument("--case", choices=(*CASES, "timing"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        import torch

        torch.set_num_threads(int(os.environ.get("INTERP_THREADS", "2")))
        if args.case == "timing":
            out = time_forwards(args.batch, args.seq, args.repeats)
        else:
            out = run_case(args.case, args.batch, args.seq)
            out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return

    def sub(case: str, env: dict | None = None) -> dict:
        cmd = [sys.executable, __file__, "--case", case, "--batch", str(args.batch), "--seq", str(args.seq),
               "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    results = sub("timing")
    for case in CASES:
        if case == "load_cold" and args.skip_cold:
            continue
        env = dict(os.environ, INTERP_CACHE=tempfile.mkdtemp(prefix="interp-cold-")) if case == "load_cold" else None
        results.setdefault(case, {}).update(sub(case, env))
        print(f"{case:15s} {results[case]}", file=sys.stderr)
    base = results["hf_forward"]["seconds"]
    print(f"\n{'case':15s} {'seconds':>9s} {'x HF':>6s} {'goal':>6s} {'peak MB':>8s}")
    for case, r in results.items():
        ratio = r["seconds"] / base if case in FORWARDS else float("nan")
        goal = f"{GOALS[case]:.2f}" if case in GOALS else ""
        print(f"{case:15s} {r['seconds']:9.3f} {ratio:6.2f} {goal:>6s} {r['peak_rss_mb']:8.0f}")
    print(json.dumps({"batch": args.batch, "seq": args.seq, "results": results}))


if __name__ == "__main__":
    main()

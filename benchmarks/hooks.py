"""Cost of the hooked model on the default model, measured in one run.

Each case runs in its own subprocess so its peak memory (max RSS) is its own. Timings are the best
of several repeats; ratios are against the plain Hugging Face model measured in the same run.

    python benchmarks/hooks.py [--batch 8] [--seq 128] [--repeats 3] [--skip-cold]
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

from timing import best_of

CASES = ("hf_forward", "hooked_forward", "cache_resid", "cache_all", "load_cached", "load_cold")


def run_case(case: str, batch: int, seq: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("INTERP_THREADS", "2")))
    from interp.models import load_hf_model, load_model

    if case.startswith("load"):
        start = time.perf_counter()
        load_model("smollm2-135m")
        return {"seconds": time.perf_counter() - start}
    tokens = torch.randint(0, 49152, (batch, seq))
    with torch.no_grad():
        if case == "hf_forward":
            model, _ = load_hf_model("smollm2-135m")
            seconds = best_of(repeats, lambda: model(tokens), warmup=1)
        else:
            model = load_model("smollm2-135m")
            if case == "hooked_forward":
                seconds = best_of(repeats, lambda: model(tokens), warmup=1)
            elif case == "cache_resid":
                seconds = best_of(repeats, lambda: model.run_with_cache(tokens, names_filter=lambda n: "hook_resid_" in n), warmup=1)
            else:
                seconds = best_of(repeats, lambda: model.run_with_cache(tokens), warmup=1)
    return {"seconds": seconds, "tokens_per_s": batch * seq / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold (GGUF conversion) load")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        out = run_case(args.case, args.batch, args.seq, args.repeats)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    results = {}
    for case in CASES:
        if case == "load_cold" and args.skip_cold:
            continue
        env = dict(os.environ)
        if case == "load_cold":
            env["INTERP_CACHE"] = tempfile.mkdtemp(prefix="interp-cold-")
        cmd = [sys.executable, __file__, "--case", case, "--batch", str(args.batch), "--seq", str(args.seq),
               "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{case:15s} {results[case]}", file=sys.stderr)
    base = results["hf_forward"]["seconds"]
    goals = {"hooked_forward": 1.05, "cache_resid": 1.3}
    print(f"\n{'case':15s} {'seconds':>9s} {'x HF':>6s} {'goal':>6s} {'peak MB':>8s}")
    for case, r in results.items():
        ratio = r["seconds"] / base if "forward" in case or "cache" in case else float("nan")
        goal = f"{goals[case]:.2f}" if case in goals else ""
        print(f"{case:15s} {r['seconds']:9.3f} {ratio:6.2f} {goal:>6s} {r['peak_rss_mb']:8.0f}")
    print(json.dumps({"batch": args.batch, "seq": args.seq, "results": results}))


if __name__ == "__main__":
    main()

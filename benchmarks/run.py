#!/usr/bin/env python
"""relayrl benchmark suite: one entry point for every comparison (see benchmarks/README.md).

    .venv/bin/python benchmarks/run.py                      # a, b, c, e (about 5 minutes) and d
    .venv/bin/python benchmarks/run.py --quick              # small settings, skips (d)
    .venv/bin/python benchmarks/run.py --only sac,sampling  # a subset
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Options  # noqa: E402

ORDER = ["overhead", "sampling", "sac", "compile", "memory", "e2e", "learning"]
MODULES = {"overhead": "bench_overhead", "sampling": "bench_sampling", "sac": "bench_sac",
           "compile": "bench_compile", "memory": "bench_memory", "e2e": "bench_e2e",
           "learning": "bench_learning"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small settings (seconds, not minutes); skips the end-to-end comparison")
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings that only check that the benchmarks run (implies --quick; for "
                        "tests/test_benchmarks_smoke.py); the numbers mean nothing")
    p.add_argument("--only", default="",
                   help=f"comma-separated subset of {','.join(ORDER)} (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per comparison (default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for overhead, sampling and memory (sac always runs 1 and 2)")
    p.add_argument("--seeds", type=int, default=3, help="end-to-end: seeds per framework (default 3)")
    p.add_argument("--e2e-budget", type=float, default=300.0,
                   help="end-to-end: seconds allowed per training run before it is stopped (default 300)")
    p.add_argument("--e2e-epochs", type=int, default=20,
                   help="end-to-end: relayrl epochs cap (default config: 10 epochs = 10,000 updates;"
                        " the run stops as soon as the target is reached)")
    p.add_argument("--sb3-threads", type=int, default=0,
                   help="end-to-end: torch threads of the SB3 runs (default 0: torch's default, one per core)")
    p.add_argument("--sb3-eval-every", type=int, default=1000,
                   help="end-to-end: SB3 evaluates (5 deterministic episodes) every this many steps")
    p.add_argument("--no-sb3-matched", action="store_true",
                   help="end-to-end: skip the SB3 runs with relayrl's learning rate (by default SB3 also "
                        "runs with the learning rate of relayrl's embedded default, to separate the "
                        "framework's speed from that setting)")
    p.add_argument("--e2e-set", action="append", default=[], metavar="KEY=VALUE",
                   help="end-to-end: override a relayrl config field (dotted, e.g. "
                        "training.torch_threads=1; repeatable) to try a setting against the default")
    p.add_argument("--e2e-env", action="append", default=[], metavar="NAME=VALUE",
                   help="end-to-end: environment variable for both frameworks' processes (e.g. "
                        "OMP_WAIT_POLICY=PASSIVE; repeatable)")
    p.add_argument("--learning-seeds", type=int, default=5,
                   help="learning curves: seeds per implementation (default 5)")
    p.add_argument("--learning-steps", type=int, default=5000,
                   help="learning curves: environment steps per run (default 5000)")
    p.add_argument("--json", default="", help="also write the headline numbers to this JSON file")
    p.add_argument("-v", "--verbose", action="store_true", help="print every repeat")
    p.add_argument("--in-process", action="store_true",
                   help="run the benchmarks in this process (default: one fresh subprocess each, so "
                        "that torch thread settings, the malloc tuning SACAgent applies and leftover "
                        "memory of one benchmark do not leak into the next)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--child-json", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_one(name: str, opts: Options) -> bool:
    """Run one benchmark module here; print its tables; return False on an error."""
    try:
        module = __import__(MODULES[name])
        for block in module.run(opts):
            print(block + "\n", flush=True)
        return True
    except Exception:  # noqa: BLE001  -- report and go on with the other benchmarks
        traceback.print_exc()
        print(f"[failed] {name}", flush=True)
        return False


def child_argv(args, name: str, json_path: str) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--child", name, "--child-json", json_path,
            "--repeats", str(args.repeats), "--threads", str(args.threads), "--seeds", str(args.seeds),
            "--e2e-budget", str(args.e2e_budget), "--e2e-epochs", str(args.e2e_epochs),
            "--sb3-threads", str(args.sb3_threads), "--sb3-eval-every", str(args.sb3_eval_every),
            "--learning-seeds", str(args.learning_seeds), "--learning-steps", str(args.learning_steps)]
    for item in args.e2e_set:
        argv += ["--e2e-set", item]
    for item in args.e2e_env:
        argv += ["--e2e-env", item]
    if args.no_sb3_matched:
        argv.append("--no-sb3-matched")
    if args.quick:
        argv.append("--quick")
    if args.smoke:
        argv.append("--smoke")
    if args.verbose:
        argv.append("--verbose")
    return argv


def options_from(args) -> Options:
    import _common
    _common.SMOKE = bool(args.smoke)
    return Options(quick=args.quick, smoke=args.smoke, repeats=max(1, args.repeats),
                   threads=max(1, args.threads), seeds=max(1, args.seeds),
                   e2e_budget=args.e2e_budget, e2e_epochs=args.e2e_epochs,
                   sb3_threads=args.sb3_threads, sb3_eval_every=max(1, args.sb3_eval_every),
                   sb3_matched=not args.no_sb3_matched,
                   e2e_set=list(args.e2e_set), e2e_env=list(args.e2e_env),
                   learning_seeds=max(1, args.learning_seeds), learning_steps=max(500, args.learning_steps),
                   verbose=args.verbose)


def main(argv=None) -> int:
    args = parse(argv)
    args.quick = args.quick or args.smoke
    if args.child:
        opts = options_from(args)
        ok = run_one(args.child, opts)
        if args.child_json:
            with open(args.child_json, "w") as f:
                json.dump(opts.results, f, default=str)
        return 0 if ok else 1
    wanted = [w.strip() for w in args.only.split(",") if w.strip()] or list(ORDER)
    unknown = sorted(set(wanted) - set(ORDER))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {ORDER}", file=sys.stderr)
        return 2
    if args.quick and "e2e" in wanted:
        if args.only:
            print("[skipped] e2e: --quick skips the end-to-end comparison (minutes per seed)")
        wanted.remove("e2e")
    opts = options_from(args)
    failures = 0
    started = time.perf_counter()
    for name in ORDER:
        if name not in wanted:
            continue
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        if args.in_process:
            failures += not run_one(name, opts)
        else:
            with tempfile.TemporaryDirectory(prefix="relayrl-bench-") as tmp:
                part = os.path.join(tmp, "results.json")
                code = subprocess.call(child_argv(args, name, part))
                if code != 0:
                    failures += 1
                    print(f"[failed] {name} (exit code {code})", flush=True)
                if os.path.exists(part):
                    with open(part) as f:
                        opts.results.update(json.load(f))
        print(f"({name} took {time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"\nall done in {time.perf_counter() - started:.1f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(opts.results, f, indent=2, sort_keys=True, default=str)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

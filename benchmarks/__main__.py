"""``python -m benchmarks NAME [ARGS...]`` (what ``fitfed bench`` and ``make bench`` run): one named benchmark.

Each benchmark writes ``benchmarks/results/NAME.json`` and ``NAME.md``; ``ARGS`` go to the benchmark
(``python -m benchmarks NAME --help`` lists them). ``all`` runs every benchmark in turn with its defaults.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, what it measures, roughly how long a full run takes on 2 cores)
BENCHMARKS = {
    "heart_disease": ("benchmarks.heart_disease", "FLamby's Fed-Heart-Disease table on fitfed's FLARE jobs", "21 min"),
    "round_latency": ("benchmarks.round_latency", "seconds per round, fitfed (FLARE) vs Flower, 4/20/100 clients",
                      "7 min"),
    "scaling": ("benchmarks.scaling", "seconds per round and peak memory from 4 to 100 clubs", "30 min"),
    "privacy": ("benchmarks.privacy", "what DP and HE cost per round, DP-SGD accuracy at epsilon 1/3/8", "3 min"),
    "robustness": ("benchmarks.robustness", "robust aggregators against 5 attacks on heart_disease", "9 min"),
    "secure_aggregation": ("benchmarks.secure_aggregation", "per-round time and bytes of plain, HE and masking, "
                           "4/20/50 clubs", "2 min"),
}  # fmt: skip


def usage() -> str:
    """The list of benchmarks, for ``--help`` and mistakes."""
    width = max(len(name) for name in BENCHMARKS)
    rows = [f"  {name:<{width}}  {what} (about {took})" for name, (_, what, took) in BENCHMARKS.items()]
    return "\n".join(["usage: fitfed bench NAME [ARGS...]   (NAME --help for its options)", "", "benchmarks:", *rows,
                      f"  {'all':<{width}}  every benchmark above, one after another"])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmark (or all of them) with the remaining arguments."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name == "all":
        if rest:
            print("fitfed bench: `all` runs each benchmark with its defaults and takes no options", file=sys.stderr)
            return 2
        return max([main([each]) for each in BENCHMARKS])
    if name not in BENCHMARKS:
        print(f"fitfed bench: unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    print(f"fitfed bench {name}: {BENCHMARKS[name][1]} (about {BENCHMARKS[name][2]} on 2 cores)", flush=True)
    return int(importlib.import_module(BENCHMARKS[name][0]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

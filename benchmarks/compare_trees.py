"""Training speed and peak memory of two source trees, measured alternately.

Runs `benchmarks/train_throughput.py` of each tree (with that tree first on
`PYTHONPATH`, so each measures its own `keras_nvae`) `--runs` times in
alternation (A, B, A, B, ...) and reports, per tree, the median over runs of
the median seconds per step and of the peak RSS, and the ratios B / A. Run it
on an otherwise idle machine.

Example (a tree at the commit before a change against the working tree):

    git worktree add /tmp/before HEAD~1
    python benchmarks/compare_trees.py --baseline_tree /tmp/before --candidate_tree . \
        --runs 3 -- --preset mnist --batch_size 32 --xla off
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def _measure(tree, passthrough, output_json):
    """One train_throughput.py run of `tree`; returns (s/step, peak RSS GiB)."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    script = os.path.join(tree, "benchmarks", "train_throughput.py")
    command = [sys.executable, script, *passthrough, "--output_json", output_json]
    subprocess.run(command, env=env, check=True, cwd=tree)
    with open(output_json) as f:
        report = json.load(f)
    (variant,) = report["results"]
    return variant["median_s_per_step"], variant["peak_rss_gib"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline_tree", required=True, help="tree A (e.g. a worktree)")
    parser.add_argument("--candidate_tree", required=True, help="tree B")
    parser.add_argument("--runs", type=int, default=3, help="runs per tree, alternating")
    parser.add_argument("passthrough", nargs=argparse.REMAINDER,
                        help="after --: arguments of train_throughput.py (one --xla variant)")
    args = parser.parse_args(argv)
    passthrough = [a for a in args.passthrough if a != "--"]
    trees = {"baseline": args.baseline_tree, "candidate": args.candidate_tree}
    measured = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for name, tree in trees.items():
                result = _measure(tree, passthrough, os.path.join(tmp, f"{name}_{run}.json"))
                measured[name].append(result)
                print(f"run {run + 1} {name}: {result[0]:.3f} s/step, {result[1]:.2f} GiB", flush=True)
    summary = {
        name: {
            "s_per_step": [r[0] for r in runs],
            "peak_rss_gib": [r[1] for r in runs],
            "median_s_per_step": statistics.median(r[0] for r in runs),
            "median_peak_rss_gib": statistics.median(r[1] for r in runs),
        }
        for name, runs in measured.items()
    }
    base, cand = summary["baseline"], summary["candidate"]
    summary["speed_ratio"] = base["median_s_per_step"] / cand["median_s_per_step"]
    summary["memory_ratio"] = cand["median_peak_rss_gib"] / base["median_peak_rss_gib"]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""How long `NVAE.from_preset(preset)` takes to build, against a baseline commit.

Each build runs in a fresh Python process (imports excluded from the time);
wall-clock and CPU seconds are both reported, since on a shared machine the
wall clock mostly measures the other jobs.
The baseline is the library of another commit, extracted with `git archive`
into a temporary folder; builds of both alternate so that the load of a
shared machine hits both alike. Prints one JSON line per build and a summary
with the medians, their ratio and the load average.

    python benchmarks/build_time.py --preset celebahq256 --runs 3 --baseline 0af5dc6
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BUILD = """
import json, sys, time
import keras_nvae
assert keras_nvae.__file__.startswith(sys.argv[2]), keras_nvae.__file__
start, cpu_start = time.perf_counter(), time.process_time()
model = keras_nvae.NVAE.from_preset(sys.argv[1])
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds,
                  "variables": len(model.variables), "params": model.count_params()}))
"""


def build_once(preset, library_root):
    """Builds `preset` in a new process importing keras_nvae from `library_root`."""
    env = dict(os.environ, PYTHONPATH=library_root, TF_CPP_MIN_LOG_LEVEL="2")
    # `python -c` imports from its working directory first.
    out = subprocess.run(
        [sys.executable, "-c", _BUILD, preset, library_root],
        env=env, cwd=library_root, check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def extract_commit(commit, folder):
    """Writes the `keras_nvae` package of `commit` under `folder`."""
    archive = subprocess.run(
        ["git", "-C", _REPO, "archive", commit, "keras_nvae"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="celebahq256")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="commit to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        roots = {"current": _REPO}
        if args.baseline:
            extract_commit(args.baseline, folder)
            roots["baseline"] = folder
        results = {name: [] for name in roots}
        for run in range(args.runs):
            for name, root in roots.items():
                results[name].append(build_once(args.preset, root))
                print(json.dumps({"run": run, "library": name, **results[name][-1]}), flush=True)
    print(json.dumps(summarize(results, args.preset)))


def summarize(results, preset):
    """Medians of wall-clock and CPU seconds per library, and their ratios."""
    summary = {"preset": preset, "load_average": os.getloadavg()}
    for key in ("seconds", "cpu_seconds"):
        medians = {
            name: round(statistics.median(r[key] for r in runs), 2)
            for name, runs in results.items()
        }
        if "baseline" in medians:
            medians["speedup"] = round(medians["baseline"] / medians["current"], 2)
        summary[f"median_{key}"] = medians
    return summary


if __name__ == "__main__":
    main()

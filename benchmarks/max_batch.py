"""The largest batch that trains within a memory budget (`train_throughput.py --find_max_batch`).

Each probe trains one batch size in its own subprocess (one compile step and
one more step, as `train_throughput.py` measures them) while this process
watches its resident memory and kills it as soon as it exceeds the budget.
A batch size fits when the probe finishes both steps and its peak RSS
(compilation included) stays within the budget. The search doubles the
batch from `--batch_size` until a probe fails (or `--max_batch_size` is
reached), then bisects between the last fit and the first failure, so it
assumes that memory grows with the batch.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

_GIB = 1024.0**3
# Flags of train_throughput.py that the probes set themselves, with (True) or without a value.
_PROBE_FLAGS = {
    "--batch_size": True,
    "--xla": True,
    "--warmup_steps": True,
    "--steps": True,
    "--output_json": True,
    "--memory_budget_gib": True,
    "--max_batch_size": True,
    "--find_max_batch": False,
}


def search(fits, start, maximum):
    """The largest `b` in [1, maximum] with `fits(b)`, or 0 if none.

    Args:
        fits: callable `batch_size -> bool`, monotone (True up to some size).
        start: the first size probed.
        maximum: the largest size probed.

    Returns:
        int.

    Example:
    ```python
    search(lambda b: b <= 37, start=8, maximum=1024)  # 37
    ```
    """
    low, high = 0, maximum + 1  # low fits (0: nothing yet), high does not
    b = max(1, min(start, maximum))
    while b < high:
        if fits(b):
            low = b
            b = min(2 * b, maximum) if b < maximum else high
        else:
            high = b
            break
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


def _probe_argv(argv, batch_size):
    """train_throughput.py arguments for one probe: `argv` without the flags probes set."""
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in _PROBE_FLAGS:
            skip = _PROBE_FLAGS[name] and "=" not in a
            continue
        cleaned.append(a)
    return cleaned + [
        "--batch_size", str(batch_size), "--warmup_steps", "1", "--steps", "1",
    ]


def _rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_probe(script, argv, batch_size, budget_gib, xla, env, timeout_s=None):
    """Trains `batch_size` in a subprocess; returns a dict with "fits" and the peak RSS."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out_path = f.name
    cmd = [sys.executable, script] + _probe_argv(argv, batch_size)
    cmd += ["--_worker_xla", xla, "--_worker_out", out_path]
    print(f"== probe batch {batch_size}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    over, watched = False, 0
    while proc.poll() is None:
        watched = max(watched, _rss_bytes(proc.pid))
        if watched > budget_gib * _GIB or (timeout_s and time.perf_counter() - t0 > timeout_s):
            over = watched > budget_gib * _GIB
            proc.kill()
            break
        time.sleep(0.1)
    rc = proc.wait()
    probe = {"batch_size": batch_size, "wall_s": time.perf_counter() - t0, "rc": rc}
    try:
        with open(out_path) as f:
            worker = json.load(f)
    except (OSError, json.JSONDecodeError):
        worker = {}
    os.unlink(out_path)
    peak = worker.get("peak_rss_gib") or watched / _GIB
    probe.update(
        status="over budget (killed)" if over else worker.get("status", f"failed (rc={rc})"),
        peak_rss_gib=peak,
        median_s_per_step=worker.get("median_s_per_step"),
        error=worker.get("error"),
    )
    probe["fits"] = (not over) and probe["status"] == "ok" and peak <= budget_gib
    print(
        f"== probe batch {batch_size}: {probe['status']}, peak RSS {peak:.2f} GiB "
        f"({'fits' if probe['fits'] else 'does not fit'} in {budget_gib} GiB)",
        file=sys.stderr,
        flush=True,
    )
    return probe


def find_max_batch(args, argv, script):
    """Runs the search for `args` (train_throughput.py's); prints and returns the report."""
    if not args.memory_budget_gib or args.memory_budget_gib <= 0:
        raise SystemExit("--find_max_batch needs --memory_budget_gib G (G > 0), e.g. 22.")
    if args.xla == "both":
        raise SystemExit("--find_max_batch probes one setting: pass --xla off or --xla on.")
    env = dict(os.environ)
    env.update(dict(e.split("=", 1) for e in args.env))
    probes = []

    def fits(batch_size):
        probe = run_probe(
            script, argv, batch_size, args.memory_budget_gib, args.xla, env, args.timeout_s
        )
        probes.append(probe)
        return probe["fits"]

    best = search(fits, args.batch_size, args.max_batch_size)
    report = {
        "preset": args.preset,
        "memory_budget_gib": args.memory_budget_gib,
        "max_batch_size_searched": args.max_batch_size,
        "max_batch": best,
        "probes": probes,
    }
    print(f"\nprobes (preset={args.preset}, budget {args.memory_budget_gib} GiB):")
    for p in probes:
        steps = "-" if p["median_s_per_step"] is None else f"{p['median_s_per_step']:.2f} s/step"
        print(f"  batch {p['batch_size']:5d}: {p['status']:22s} peak {p['peak_rss_gib']:6.2f} GiB  {steps}")
    print(f"max batch: {best}")
    return report

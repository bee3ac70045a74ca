r"""Check keras_nvae against a fixture recorded with the official PyTorch NVAE.

Usage (`nvae-parity` is the installed command; `python -m trainers.parity` runs the same):
```
nvae-parity FIXTURE.npz
```

A forward fixture (`nvae_ref_*`, keys `param/...`) is checked with
`keras_nvae.parity.check_forward`, a training-trajectory fixture (`nvae_traj_*`, keys
`init/...`) with `keras_nvae.parity.check_trajectory`. The JSON report is printed on stdout;
a short summary goes to stderr: passed or not, the largest error against its tolerance and, for a
trajectory, the largest step-term error and the 5 tensors of the final state furthest from the
reference (also in the report as `final_state.worst_tensors`). Exit status: 0 within the
tolerances (forward 1e-5; trajectory step losses 1e-5 and final state 1e-3, relative to each
array's largest magnitude), 1 over them, 2 on a usage error
or a file that is not a readable fixture (one line on stderr).
"""

import json
import os
import sys

from absl import app

from keras_nvae.cli.common import CommandLineError
from keras_nvae.cli.common import HELP_FLAGS
from keras_nvae.cli.common import one_line
from keras_nvae.cli.common import parse_absl_flags
from keras_nvae.cli.common import program_name
from keras_nvae.cli.common import discard_start_up_output
from keras_nvae.cli.common import release_start_up_output

PASSED, FAILED, USAGE_ERROR = 0, 1, 2


def _fixture_path(argv):
    """The one positional argument of `argv`; raises `CommandLineError` otherwise."""
    args = [arg for arg in argv[1:] if arg != "--"]
    unknown = [arg for arg in args if arg.startswith("-")]
    if unknown:
        raise CommandLineError(f"unknown flags {unknown}; usage: nvae-parity FIXTURE.npz.")
    if len(args) != 1:
        raise CommandLineError(
            f"expected one fixture file, got {len(args)} arguments; usage: nvae-parity FIXTURE.npz."
        )
    return args[0]


def check_file(path):
    """The parity report of the fixture at `path` (see `keras_nvae.parity.check`).

    Raises:
        CommandLineError: the file is missing or not a readable fixture, or its
            flags or arrays do not make a model and a check.
    """
    from keras_nvae.official import parity

    if not os.path.isfile(path):
        raise CommandLineError(f"fixture file {path!r} does not exist.")
    try:
        return parity.check(path)
    except parity.FixtureError as error:
        # An unreadable file, a missing array, unsupported flags or a state dict that does
        # not fit them.
        raise CommandLineError(one_line(error)) from None


def main(argv):
    """Check the fixture named on the command line (`argv[0]` is the program).

    `run` passes the command line without absl's own flags (see
    `keras_nvae.cli.common.parse_absl_flags`); tests call `main` in-process.

    Returns:
        The exit status: 0 within tolerance, 1 over it, 2 on a usage error or an
        unreadable file (one line on stderr, no traceback).
    """
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(__doc__)
        return PASSED
    try:
        path = _fixture_path(argv)
        release_start_up_output()
        report = check_file(path)
    except CommandLineError as error:
        discard_start_up_output()
        print(f"{program_name(argv)}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    print(json.dumps(report, indent=1))
    print(summary(report), file=sys.stderr)
    return PASSED if report["passed"] else FAILED


def summary(report):
    """A few human-readable lines on a parity report (see `main`)."""
    verdict = "passed" if report["passed"] else "FAILED"
    if report["kind"] == "forward":
        return (
            f"{report['fixture']}: forward parity {verdict}: max error "
            f"{report['max_error']:.2e} (tolerance {report['tolerance']:.0e})"
        )
    tolerances, final = report["tolerances"], report["final_state"]
    lines = [
        f"{report['fixture']}: trajectory parity {verdict}",
        f"  step terms: max error {report['max_step_error']:.2e} "
        f"(tolerance {tolerances['step_terms']:.0e})",
        f"  final state: max error {final['max_error']:.2e} "
        f"(tolerance {tolerances['final_state']:.0e}); worst tensors:",
    ]
    lines += [f"    {error:.2e}  {name}" for name, error in final["worst_tensors"]]
    return "\n".join(lines)


def _parse_absl_flags(argv):
    # A bad absl flag (e.g. --verbosity=x) is a usage error: status 2, not absl's 1.
    try:
        return parse_absl_flags(argv)
    except SystemExit:
        sys.exit(USAGE_ERROR)


def run():
    """The `nvae-parity` command: `main` as an `absl.app` program."""
    app.run(main, flags_parser=_parse_absl_flags)


if __name__ == "__main__":
    run()

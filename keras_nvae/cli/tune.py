r"""Search NVAE hyper-parameters with KerasTuner and report the best model.

Usage (`nvae-tune` is the installed command; `python -m trainers.tune` runs the same):
```
nvae-tune --preset digits --dataset digits --max_trials 20 --epochs 10
nvae-tune --preset tiny --dataset images.npz --tuner hyperband --epochs 9 \
    --search_space space.json --trial_in_subprocess
```

Everything goes to --directory/--project_name (default `tuning/<preset>`): KerasTuner's state
(`oracle.json`, `trial_*/`), and when the search ends `best_hyperparameters.json`,
`best_model.keras` and the results table `results.csv` / `results.md` (trials sorted by val_bpd,
failed trials last with their reason). Running the same command again resumes the search: completed
trials are kept and not run again (`--overwrite` starts afresh).

--search_space is a JSON object from NVAEConfig field names (and batch_size) to a list of
choices, a range {"min": a, "max": b, "step": s, "sampling": "log"} or a fixed value; default:
`keras_nvae.tuning.default_search_space`.

Distributed search (KerasTuner's chief/worker mode over gRPC; all processes get the same flags
and a shared --directory):
```
KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 nvae-tune ...
KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 nvae-tune ...
```
The chief runs no trials; it writes the results when the workers have finished.

An out-of-memory trial kills its process, which an in-process search cannot catch on a CPU:
with --trial_in_subprocess every trial runs in a child process, and a killed child is recorded
as a failed trial while the search goes on.

The last line printed (to stdout; progress goes to the absl log on stderr) is the best trial's
score, e.g. `best val_bpd: 5.1234 (trial 3); results in tuning/digits`. User errors (bad flags,
overrides or search space, missing data, no completed trial) print one line to stderr and exit
with 1.
"""

import csv
import functools
import json
import math
import os
import sys

from absl import app
from absl import flags
from absl import logging
import keras
import keras_tuner

from keras_nvae.cli.common import CommandLineError
from keras_nvae.cli.common import load_dataset
from keras_nvae.cli.common import one_line
from keras_nvae.cli.common import parse_absl_flags
from keras_nvae.cli.common import run_main
from keras_nvae.cli.shared_flags import define_batch_cap_flags
from keras_nvae.cli.shared_flags import define_model_and_data_flags
from keras_nvae.cli.trial_process import BEST_WEIGHTS
from keras_nvae.cli.trial_process import INITIAL_WEIGHTS
from keras_nvae.cli.trial_process import REQUEST
from keras_nvae.cli.trial_process import RESULT
from keras_nvae.cli.trial_process import SubprocessHyperModel
from keras_nvae.config import parse_overrides
from keras_nvae import presets
from keras_nvae.training import tuning

# A private FlagValues (the convention of keras_nvae.cli): importing this program next to the
# others, which also define e.g. --preset or --dataset, never clashes; `main` parses it.
FLAGS = flags.FlagValues()
define_model_and_data_flags(
    FLAGS,
    eval_split_help="Split the objective val_bpd is computed on.",
    epochs_help="Epochs per trial (Hyperband: max_epochs); default the preset's.",
    override_help="Fixed for every trial. Repeatable.",
)
flags.DEFINE_enum(
    "tuner", "random", ["random", "hyperband", "bayesian"], "Search algorithm.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "max_trials",
    10,
    "Trials to run (random, bayesian; Hyperband runs its brackets).",
    lower_bound=1,
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "hyperband_factor", 3, "Hyperband's reduction factor.", lower_bound=2, flag_values=FLAGS
)
flags.DEFINE_string(
    "directory", "tuning", "Folder of the search state and results.", flag_values=FLAGS
)
flags.DEFINE_string(
    "project_name", None, "Sub-folder of --directory (default: the preset).", flag_values=FLAGS
)
flags.DEFINE_string("search_space", None, "JSON file of the search space.", flag_values=FLAGS)
flags.DEFINE_bool(
    "overwrite",
    False,
    "Delete an earlier search in the folder and start afresh.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "max_consecutive_failed_trials",
    3,
    "Stop after this many failed trials in a row.",
    lower_bound=1,
    flag_values=FLAGS,
)
define_batch_cap_flags(FLAGS, "Cap on validation batches.")
flags.DEFINE_integer(
    "seed", 0, "Seed of the search, weights and shuffling.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "trial_in_subprocess",
    False,
    "Run every trial in a child process (survives out-of-memory).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "run_trial", None, "Internal: run one trial described in this folder.", flag_values=FLAGS
)

OBJECTIVE = "val_bpd"


def load_search_space(path):
    """The --search_space JSON object, or None for the default space.

    Raises:
        CommandLineError: an unreadable file or one without a JSON object.
    """
    if path is None:
        return None
    try:
        with open(path) as file:
            space = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise CommandLineError(f"--search_space {path!r}: {one_line(error)}") from None
    if not isinstance(space, dict):
        raise CommandLineError(f"--search_space {path!r} must hold a JSON object.")
    return space


def trial_command(program_args):
    """The command line of a child process that runs one trial.

    Args:
        program_args: this program's command line without `argv[0]`.

    Returns:
        The program re-run with the same flags (and absl verbosity); the
        caller appends `--run_trial=<folder>`.
    """
    args = [arg for arg in program_args if not arg.startswith("--run_trial")]
    return [
        sys.executable,
        "-m",
        "trainers.tune",
        *args,
        f"--verbosity={logging.get_verbosity()}",
    ]


def make_hypermodel(program_args):
    """The `NVAEHyperModel` the flags describe.

    Args:
        program_args: this program's command line without `argv[0]`; with
            --trial_in_subprocess every trial re-runs it in a child process.

    Returns:
        A `SubprocessHyperModel` with --trial_in_subprocess (except in the child
        itself), a `keras_nvae.tuning.NVAEHyperModel` otherwise.

    Raises:
        CommandLineError: bad overrides, preset or search space.
    """
    try:
        overrides = parse_overrides(FLAGS.override)
        epochs = FLAGS.epochs or presets.preset_config(FLAGS.preset, **overrides).epochs
        options = dict(
            search_space=load_search_space(FLAGS.search_space),
            max_epochs=epochs if FLAGS.tuner == "hyperband" else None,
            **overrides,
        )
        if FLAGS.trial_in_subprocess and not FLAGS.run_trial:
            return SubprocessHyperModel(trial_command(program_args), FLAGS.preset, **options)
        return tuning.NVAEHyperModel(FLAGS.preset, **options)
    except ValueError as error:
        raise CommandLineError(one_line(error)) from None


def make_datasets(config):
    """(train, validation) pipelines batched by the configuration's batch size.

    Raises:
        CommandLineError: unknown, missing or mismatched data (see
            `keras_nvae.cli.common.load_dataset`).
    """
    common = dict(batch_size=config.batch_size, data_dir=FLAGS.data_dir, seed=FLAGS.seed)
    hint = (
        f"Pick a matching --preset (now {FLAGS.preset!r}) or "
        "--override image_shape=[height,width,channels]."
    )
    train = load_dataset(FLAGS.dataset, "train", config.image_shape, hint=hint, **common)
    validation = load_dataset(
        FLAGS.dataset, FLAGS.eval_split, config.image_shape, hint=hint, shuffle=False, **common
    )
    if FLAGS.max_train_batches:
        train = train.take(FLAGS.max_train_batches)
    if FLAGS.max_eval_batches:
        validation = validation.take(FLAGS.max_eval_batches)
    return train, validation


def make_tuner(hypermodel):
    """The KerasTuner tuner of --tuner (reloads an earlier search unless --overwrite)."""
    common = dict(
        objective=keras_tuner.Objective(OBJECTIVE, "min"),
        directory=FLAGS.directory,
        project_name=FLAGS.project_name or FLAGS.preset,
        overwrite=FLAGS.overwrite,
        seed=FLAGS.seed,
        max_consecutive_failed_trials=FLAGS.max_consecutive_failed_trials,
    )
    if FLAGS.tuner == "hyperband":
        return keras_tuner.Hyperband(
            hypermodel, max_epochs=trial_epochs(hypermodel), factor=FLAGS.hyperband_factor, **common
        )
    if FLAGS.tuner == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=FLAGS.max_trials, **common)
    return keras_tuner.RandomSearch(hypermodel, max_trials=FLAGS.max_trials, **common)


def trial_epochs(hypermodel):
    """Epochs per trial: --epochs, else the preset's."""
    return FLAGS.epochs or hypermodel.base_config.epochs


def failure_reason(trial):
    """The last line of a failed trial's traceback, without the exception's module."""
    lines = [line.strip() for line in (trial.message or "").splitlines() if line.strip()]
    if not lines:
        return ""
    kind, separator, text = lines[-1].partition(": ")
    return f"{kind.rsplit('.', 1)[-1]}: {text}" if separator else lines[-1]


def results_rows(oracle):
    """One dict per trial, completed trials by val_bpd first, then the others."""
    rows = []
    for trial in oracle.trials.values():
        score = trial.score if trial.status == "COMPLETED" else None
        rows.append(
            {
                "trial_id": trial.trial_id,
                "status": trial.status,
                OBJECTIVE: score,
                "hyperparameters": {
                    name: value
                    for name, value in trial.hyperparameters.values.items()
                    if not name.startswith("tuner/")
                },
                "reason": "" if trial.status == "COMPLETED" else failure_reason(trial),
            }
        )
    finished = lambda row: row[OBJECTIVE] is not None and math.isfinite(row[OBJECTIVE])  # noqa: E731
    return sorted(
        rows,
        key=lambda row: (not finished(row), row[OBJECTIVE] if finished(row) else 0, row["trial_id"]),
    )


def write_results(rows, directory):
    """Write results.csv and results.md (one row per trial)."""
    names = sorted({name for row in rows for name in row["hyperparameters"]})
    header = ["rank", "trial_id", "status", OBJECTIVE, *names, "reason"]
    table = []
    for rank, row in enumerate(rows, 1):
        score = "" if row[OBJECTIVE] is None else f"{row[OBJECTIVE]:.5f}"
        values = [row["hyperparameters"].get(name, "") for name in names]
        table.append([rank, row["trial_id"], row["status"], score, *values, row["reason"]])
    with open(os.path.join(directory, "results.csv"), "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(table)
    with open(os.path.join(directory, "results.md"), "w") as file:
        file.write("| " + " | ".join(header) + " |\n")
        file.write("|" + "---|" * len(header) + "\n")
        for line in table:
            cells = [str(cell).replace("|", "\\|") for cell in line]
            file.write("| " + " | ".join(cells) + " |\n")


def write_outputs(tuner):
    """Results table, best hyper-parameters and best model in the project folder."""
    directory = tuner.project_dir
    rows = results_rows(tuner.oracle)
    write_results(rows, directory)
    best = [row for row in rows if row["status"] == "COMPLETED" and row[OBJECTIVE] is not None]
    if not best:
        raise CommandLineError(
            f"no trial completed; see {os.path.join(directory, 'results.md')}."
        )
    with open(os.path.join(directory, "best_hyperparameters.json"), "w") as file:
        json.dump(
            {
                "trial_id": best[0]["trial_id"],
                OBJECTIVE: best[0][OBJECTIVE],
                "preset": FLAGS.preset,
                "hyperparameters": best[0]["hyperparameters"],
            },
            file,
            indent=2,
        )
    tuner.get_best_models(1)[0].save(os.path.join(directory, "best_model.keras"))
    logging.info("Wrote results.csv, results.md, best_hyperparameters.json, best_model.keras")
    print(f"best {OBJECTIVE}: {best[0][OBJECTIVE]:.4f} (trial {best[0]['trial_id']}); "
          f"results in {directory}", flush=True)


def run_trial(work, hypermodel):
    """Child process: train the trial described in `work`, write its result there.

    Args:
        work: the folder `SubprocessHyperModel.fit` prepared.
        hypermodel: the in-process `NVAEHyperModel` of the flags.
    """
    with open(os.path.join(work, REQUEST)) as file:
        request = json.load(file)
    hp = keras_tuner.HyperParameters.from_config(request["hyperparameters"])
    train, validation = make_datasets(hypermodel.base_config)
    checkpoint = keras.callbacks.ModelCheckpoint(
        os.path.join(work, BEST_WEIGHTS),
        monitor=OBJECTIVE,
        mode="min",
        save_best_only=True,
        save_weights_only=True,
    )
    try:
        model = hypermodel.build(hp)
        model.load_weights(os.path.join(work, INITIAL_WEIGHTS))
        history = hypermodel.fit(
            hp,
            model,
            train,
            validation_data=validation,
            epochs=request["epochs"],
            initial_epoch=request["initial_epoch"],
            callbacks=[checkpoint],
            verbose=2,
        )
        result = {
            "history": {
                name: [float(value) for value in values]
                for name, values in history.history.items()
            }
        }
    except keras_tuner.errors.FailedTrialError as error:
        result = {"failed": str(error)}
    with open(os.path.join(work, RESULT), "w") as file:
        json.dump(result, file)


def is_distributed_worker():
    """Whether this process is a worker of a distributed search (not the chief)."""
    return bool(os.environ.get("KERASTUNER_ORACLE_IP")) and (
        os.environ.get("KERASTUNER_TUNER_ID", "tuner0") != "chief"
    )


def tune(program_args):
    """Search as the flags say; raises `CommandLineError` for user errors.

    Args:
        program_args: the command line without `argv[0]`, which trials in
            child processes (--trial_in_subprocess) re-run.
    """
    keras.utils.set_random_seed(FLAGS.seed)
    hypermodel = make_hypermodel(program_args)
    if FLAGS.run_trial:
        run_trial(FLAGS.run_trial, hypermodel)
        return
    train, validation = make_datasets(hypermodel.base_config)
    tuner = make_tuner(hypermodel)
    logging.info(
        "Searching preset %r on %r with the %s tuner, %d epoch(s) per trial; state in %s",
        FLAGS.preset,
        FLAGS.dataset,
        FLAGS.tuner,
        trial_epochs(hypermodel),
        tuner.project_dir,
    )
    tuner.search(train, validation_data=validation, epochs=trial_epochs(hypermodel), verbose=2)
    if is_distributed_worker():
        logging.info("Worker %s finished.", os.environ.get("KERASTUNER_TUNER_ID"))
        return
    write_outputs(tuner)


def main(argv):
    """Run the search on a command line (`argv[0]` is the program).

    `run` passes the command line without absl's own flags (see
    `keras_nvae.cli.common.parse_absl_flags`); tests call `main` in-process.

    Returns:
        The exit status: 0 on success, 1 on a user error (one line on stderr).
    """
    return run_main(functools.partial(tune, list(argv[1:])), FLAGS, argv, __doc__)


def run():
    """The `nvae-tune` command: `main` as an `absl.app` program."""
    app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
    run()

"""Tuning trials in child processes: a crashed or killed trial fails alone.

With `nvae-tune --trial_in_subprocess`, `SubprocessHyperModel.fit` writes the
trial's request and initial weights to a folder, runs the program again with
`--run_trial=<folder>` (`keras_nvae.cli.tune.run_trial` in the child) and
replays the child's epoch logs to the tuner's callbacks.
"""

import json
import os
import signal
import subprocess
import tempfile

import keras
import keras_tuner

from keras_nvae.training import tuning

INITIAL_WEIGHTS = "initial.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
REQUEST = "request.json"
RESULT = "result.json"


def replay_epochs(model, history_logs, callbacks, initial_epoch):
    """Give `callbacks` the epoch logs of a trial trained elsewhere.

    KerasTuner's callbacks (best-epoch checkpoint, per-epoch reports) then see
    the trial as if it had run in this process; `model` holds the best weights.

    Returns:
        A `keras.callbacks.History` with those logs.
    """
    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(list(callbacks or []) + [history], model=model)
    callback_list.on_train_begin()
    for index in range(len(history_logs.get("loss", []))):
        logs = {name: values[index] for name, values in history_logs.items()}
        callback_list.on_epoch_end(initial_epoch + index, logs)
    callback_list.on_train_end()
    return history


class SubprocessHyperModel(tuning.NVAEHyperModel):
    """`NVAEHyperModel` whose `fit` trains in a child process (`--run_trial`).

    A child killed by the system (out of memory) is a failed trial instead of
    the end of the search.

    Args:
        trial_command: the child's command line (see `trial_command`);
            `--run_trial=<folder>` is appended per trial.
        preset: name of a built-in preset.
        **kwargs: the other `NVAEHyperModel` arguments.

    Example:
    ```python
    hypermodel = SubprocessHyperModel(trial_command(["--preset=tiny"]), "tiny")
    ```
    """

    def __init__(self, trial_command, preset, **kwargs):
        super().__init__(preset, **kwargs)
        self.trial_command = list(trial_command)

    def fit(self, hp, model, *args, **kwargs):
        with tempfile.TemporaryDirectory(prefix="nvae_trial_") as work:
            model.save_weights(os.path.join(work, INITIAL_WEIGHTS))
            initial_epoch = kwargs.get("initial_epoch", 0)
            with open(os.path.join(work, REQUEST), "w") as file:
                json.dump(
                    {
                        "hyperparameters": hp.get_config(),
                        "epochs": kwargs.get("epochs", 1),
                        "initial_epoch": initial_epoch,
                    },
                    file,
                )
            result = run_child(self.trial_command, work)
            model.load_weights(os.path.join(work, BEST_WEIGHTS))
        return replay_epochs(model, result["history"], kwargs.get("callbacks"), initial_epoch)


def run_child(command, work):
    """Run `command --run_trial=work`; returns the trial's result.

    Raises:
        keras_tuner.errors.FailedTrialError: the child was killed, crashed or
            reported a failed trial.
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        env.pop(name, None)
    status = subprocess.run([*command, f"--run_trial={work}"], env=env).returncode
    if status < 0:
        raise keras_tuner.errors.FailedTrialError(
            f"the trial's process was killed by {signal.Signals(-status).name} "
            "(out of memory?)."
        )
    path = os.path.join(work, RESULT)
    if status != 0 or not os.path.exists(path):
        raise keras_tuner.errors.FailedTrialError(
            f"the trial's process exited with status {status}; see its log above."
        )
    with open(path) as file:
        result = json.load(file)
    if "failed" in result:
        raise keras_tuner.errors.FailedTrialError(result["failed"])
    return result

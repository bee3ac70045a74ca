"""KerasTuner searches over NVAE hyper-parameters.

`NVAEHyperModel` turns a preset into a `keras_tuner.HyperModel`: every trial
builds the preset with the searched values (and the caller's fixed
overrides), compiles it with the preset's optimiser and schedules, trains it
and reports the validation NELBO in bits/dim, `val_bpd`.

Example:
```python
import keras_tuner
from keras_nvae import tuning

tuner = keras_tuner.RandomSearch(
    tuning.NVAEHyperModel(preset="tiny"),
    objective=keras_tuner.Objective("val_bpd", "min"),
    max_trials=10,
    directory="tuning",
    project_name="tiny",
)
tuner.search(x_train, validation_data=(x_val,), epochs=5, batch_size=16)
best = tuner.get_best_models(1)[0]
```
"""

import dataclasses
import math

import keras
import keras_tuner
import numpy as np
import tensorflow as tf

from keras_nvae import inputs
from keras_nvae.config import NVAEConfig
from keras_nvae.model import NVAE
from keras_nvae import presets as presets_lib

OBJECTIVE = "val_bpd"
EVALUATION_SEED = 2020

_RANGE_KEYS = {"min", "max", "step", "sampling"}


def searchable_names():
    """Names a search space may use: the `NVAEConfig` fields (incl. `batch_size`)."""
    return sorted(field.name for field in dataclasses.fields(NVAEConfig))


def _check_names(names, where):
    unknown = sorted(set(names) - set(searchable_names()))
    if unknown:
        raise ValueError(
            f"{where}: unknown hyper-parameter name(s) {unknown}. Search spaces use "
            f"NVAEConfig field names: {', '.join(searchable_names())}."
        )


def _halve_double(value, minimum, multiple=1):
    """[value / 2, value, 2 value], rounded to `multiple`, at least `minimum`."""
    values = {max(minimum, multiple * round(v / multiple)) for v in (value / 2, value, 2 * value)}
    return sorted(values)


def default_search_space(config):
    """The default search space around a configuration.

    | name | values |
    |---|---|
    | `num_channels_enc`, `num_channels_dec` | half, same, double the preset's (multiples of 4) |
    | `num_groups_per_scale` | half, same, double the preset's (at least 2 with one scale) |
    | `num_cell_per_cond_enc`, `num_cell_per_cond_dec` | 1, 2 |
    | `num_flows` | 0, 1, 2 |
    | `learning_rate` | 1e-3 to 2e-2, log scale |
    | `kl_anneal_portion` (KL warm-up) | 0.1 to 0.5 |
    | `weight_decay_norm` (spectral lambda) | 1e-3 to 1e-1, log scale |

    Choices are listed cheapest first: KerasTuner builds that model when the
    tuner is created.

    Args:
        config: the preset's `NVAEConfig`.

    Returns:
        A dict search space (see `NVAEHyperModel`).
    """
    min_groups = 2 if config.num_latent_scales == 1 else 1
    return {
        "num_channels_enc": _halve_double(config.num_channels_enc, 4, multiple=4),
        "num_channels_dec": _halve_double(config.num_channels_dec, 4, multiple=4),
        "num_groups_per_scale": _halve_double(config.num_groups_per_scale, min_groups),
        "num_cell_per_cond_enc": [1, 2],
        "num_cell_per_cond_dec": [1, 2],
        "num_flows": [0, 1, 2],
        "learning_rate": {"min": 1e-3, "max": 2e-2, "sampling": "log"},
        "kl_anneal_portion": {"min": 0.1, "max": 0.5},
        "weight_decay_norm": {"min": 1e-3, "max": 1e-1, "sampling": "log"},
    }


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_spec(name, spec):
    """Raise a clear error for a malformed search-space entry."""
    if isinstance(spec, (list, tuple)):
        if not spec or not all(isinstance(v, (bool, int, float, str)) for v in spec):
            raise ValueError(
                f"search_space[{name!r}]: a choice must be a non-empty list of numbers, "
                f"booleans or strings, got {spec!r}."
            )
    elif isinstance(spec, dict):
        extra = sorted(set(spec) - _RANGE_KEYS)
        if extra or "min" not in spec or "max" not in spec:
            raise ValueError(
                f"search_space[{name!r}]: a range is a dict with 'min' and 'max' (and "
                f"optionally 'step', 'sampling'), got keys {sorted(spec)}."
            )
        if not (_is_number(spec["min"]) and _is_number(spec["max"])) or spec["min"] > spec["max"]:
            raise ValueError(
                f"search_space[{name!r}]: 'min' and 'max' must be numbers with min <= max, "
                f"got {spec['min']!r} and {spec['max']!r}."
            )
    elif not isinstance(spec, (bool, int, float, str)):
        raise ValueError(
            f"search_space[{name!r}] must be a list (choice), a dict with 'min'/'max' "
            f"(range) or a single value (fixed), got {type(spec).__name__}."
        )


def _spec_values(spec):
    """The values of an entry worth validating on their own (choices, range ends)."""
    if isinstance(spec, (list, tuple)):
        return list(spec)
    if isinstance(spec, dict):
        return [spec["min"], spec["max"]]
    return [spec]


def _declare(hp, name, spec):
    """Declare one search-space entry on `hp` and return its current value."""
    if isinstance(spec, (list, tuple)):
        return hp.Choice(name, list(spec))
    if isinstance(spec, dict):
        sampling = spec.get("sampling", "linear")
        if isinstance(spec["min"], int) and isinstance(spec["max"], int):
            return hp.Int(name, spec["min"], spec["max"], step=spec.get("step"), sampling=sampling)
        return hp.Float(name, spec["min"], spec["max"], step=spec.get("step"), sampling=sampling)
    return hp.Fixed(name, spec)


class _FixedSeedValidation(keras.callbacks.Callback):
    """Validates with the same posterior noise every time (seeded), then restores
    the training noise stream, so `val_bpd` depends on the weights only."""

    def __init__(self, seed):
        super().__init__()
        self.seed = seed
        self._saved_state = None

    def on_test_begin(self, logs=None):
        state = self.model.seed_generator.state
        self._saved_state = keras.ops.convert_to_numpy(state)
        state.assign(np.array([self.seed, 0], dtype=self._saved_state.dtype))

    def on_test_end(self, logs=None):
        self.model.seed_generator.state.assign(self._saved_state)


class _FailOnNonFinite(keras.callbacks.Callback):
    """Raises `FailedTrialError` when the epoch's loss or `val_bpd` is not finite."""

    def on_epoch_end(self, epoch, logs=None):
        for name in ("loss", OBJECTIVE):
            value = (logs or {}).get(name)
            if value is not None and not math.isfinite(float(value)):
                raise keras_tuner.errors.FailedTrialError(
                    f"non-finite {name} ({float(value)}) at epoch {epoch + 1}; the "
                    "hyper-parameters diverge (e.g. a too large learning rate)."
                )


def evaluate_bpd(model, data, batch_size=None, seed=EVALUATION_SEED):
    """Validation NELBO bits/dim of `model` with fixed posterior noise.

    This is how `NVAEHyperModel` computes `val_bpd`, so a trial's best model
    reproduces its recorded score.

    Args:
        model: an `NVAE`.
        data: images (array) or a `tf.data.Dataset` of image batches.
        batch_size: batch size for arrays (default: the model's).
        seed: the evaluation seed.

    Returns:
        float, bits per dimension.
    """
    if not isinstance(data, tf.data.Dataset):
        batch_size = batch_size or model.config.batch_size
    logs = model.evaluate(
        data,
        batch_size=batch_size,
        callbacks=[_FixedSeedValidation(seed)],
        return_dict=True,
        verbose=0,
    )
    return float(logs["bpd"])


def _count_images(dataset):
    """Images in a finite dataset of batches (one pass over it)."""
    if int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "NVAEHyperModel.fit cannot re-batch an infinite dataset for a searched batch_size; "
            "pass a finite dataset (repeat it with `steps_per_epoch` outside the search) or do "
            "not search batch_size."
        )
    return int(
        dataset.reduce(
            tf.constant(0, tf.int64),
            lambda count, batch: count + tf.shape(tf.nest.flatten(batch)[0], tf.int64)[0],
        )
    )


def _compile_for_schedule(model, total_steps, steps_per_epoch):
    """Compile with schedules over `total_steps`, keeping a built optimizer's state.

    Hyperband's continued trials load their predecessor's checkpoint, optimizer
    included, after `build`; carrying that state over keeps the learning-rate
    schedule's position and the Adamax moments.
    """
    previous = model.optimizer
    with model.distribute_strategy.scope():
        model.compile(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        if previous is not None and previous.built:
            model.optimizer.build(model.trainable_variables)
            for target, source in zip(model.optimizer.variables, previous.variables):
                target.assign(source)


class NVAEHyperModel(keras_tuner.HyperModel):
    """A KerasTuner `HyperModel` over the configuration of an NVAE preset.

    `build(hp)` returns the preset with the searched values and the fixed
    overrides, compiled with the preset's optimiser and schedules. `fit` sets
    the schedules (learning-rate warm-up and cosine, KL warm-up) to span the
    trial's training (`max_epochs` x steps per epoch when given: Hyperband),
    validates with fixed posterior noise (`evaluate_bpd`) and raises
    `keras_tuner.errors.FailedTrialError` when the loss or `val_bpd` is not
    finite, so KerasTuner records the trial as failed and goes on. Use the
    objective `keras_tuner.Objective("val_bpd", "min")`.

    KerasTuner calls `build` when a tuner is created, in every process of a
    distributed search: once with each choice's first value, and once more per
    conditional scope. List the cheapest value of each choice first.

    Args:
        preset: name of a built-in preset.
        search_space: None for `default_search_space(preset config)` (minus the
            fixed overrides); a dict from `NVAEConfig` field names (`batch_size`
            included) to a list of choices, a range
            `{"min": a, "max": b, "step": s, "sampling": "linear" | "log"}`
            (integers if `min` and `max` are, floats otherwise) or one fixed
            value; or a callable taking `hp` and returning such names mapped to
            values (declare your own hyper-parameters, conditional scopes
            included). When `num_latent_scales` and `num_groups_per_scale` are
            both choices, the group choice is declared once per number of
            scales (conditional), leaving out one group on a single scale.
        max_epochs: epochs the schedules span; default the `epochs` of the
            search. Required with Hyperband: set it to the Hyperband's
            `max_epochs`, so a trial's schedules do not change between brackets.
        evaluation_seed: seed of the posterior noise used for validation.
        **fixed_overrides: `NVAEConfig` fields fixed for every trial.

    Raises:
        ValueError: unknown preset, invalid fixed override, unknown names in the
            search space, malformed entries or values the preset rejects.

    Example:
    ```python
    hypermodel = NVAEHyperModel(
        "tiny",
        search_space={"num_channels_enc": [8, 16], "learning_rate": {"min": 1e-3, "max": 1e-2}},
        num_flows=0,
    )
    tuner = keras_tuner.RandomSearch(
        hypermodel, objective=keras_tuner.Objective("val_bpd", "min"), max_trials=4
    )
    tuner.search(x_train, validation_data=(x_val,), epochs=4, batch_size=16)
    ```
    """

    def __init__(
        self,
        preset="cifar10",
        search_space=None,
        max_epochs=None,
        evaluation_seed=EVALUATION_SEED,
        **fixed_overrides,
    ):
        super().__init__(name=f"nvae_{preset}")
        self.preset = preset
        self.fixed_overrides = dict(fixed_overrides)
        self.base_config = presets_lib.preset_config(preset, **fixed_overrides)
        if max_epochs is not None and (isinstance(max_epochs, bool) or int(max_epochs) < 1):
            raise ValueError(f"`max_epochs` must be a positive int or None, got {max_epochs!r}.")
        self.max_epochs = max_epochs
        self.evaluation_seed = int(evaluation_seed)
        self._image_counts = {}
        if search_space is None:
            search_space = {
                name: spec
                for name, spec in default_search_space(self.base_config).items()
                if name not in self.fixed_overrides
            }
        if not callable(search_space):
            search_space = self._checked_space(search_space)
        self.search_space = search_space

    def _checked_space(self, space):
        if not isinstance(space, dict):
            raise ValueError(
                "`search_space` must be None, a dict or a callable taking `hp`, got "
                f"{type(space).__name__}."
            )
        _check_names(space, "search_space")
        fixed = sorted(set(space) & set(self.fixed_overrides))
        if fixed:
            raise ValueError(
                f"{fixed} are both fixed overrides and searched; drop them from one of the two."
            )
        for name, spec in space.items():
            _check_spec(name, spec)
        grouped = self._grouped_by_scales(space)
        for name, spec in space.items():
            if grouped and name == "num_groups_per_scale":
                continue
            for value in _spec_values(spec):
                try:
                    self.base_config.replace(**{name: value})
                except ValueError as error:
                    raise ValueError(
                        f"search_space[{name!r}]: value {value!r} is invalid for preset "
                        f"{self.preset!r}: {error}"
                    ) from None
        if grouped:
            for scales in space["num_latent_scales"]:
                if not self._groups_for_scales(space["num_groups_per_scale"], scales):
                    raise ValueError(
                        "search_space['num_groups_per_scale'] needs a value >= 2 for "
                        "num_latent_scales=1."
                    )
        return dict(space)

    @staticmethod
    def _grouped_by_scales(space):
        return isinstance(space.get("num_latent_scales"), (list, tuple)) and isinstance(
            space.get("num_groups_per_scale"), (list, tuple)
        )

    @staticmethod
    def _groups_for_scales(groups, scales):
        return [g for g in groups if scales > 1 or g >= 2]

    def searched_values(self, hp):
        """Declare the search space on `hp`; returns {NVAEConfig field: value}."""
        if callable(self.search_space):
            values = self.search_space(hp)
            if not isinstance(values, dict):
                raise ValueError(
                    "A callable search_space must return a dict of NVAEConfig field names "
                    f"to values, got {type(values).__name__}."
                )
            _check_names(values, "search_space(hp)")
            return {name: value for name, value in values.items() if value is not None}
        values = {}
        grouped = self._grouped_by_scales(self.search_space)
        for name, spec in self.search_space.items():
            if not (grouped and name == "num_groups_per_scale"):
                values[name] = _declare(hp, name, spec)
        if grouped:
            values["num_groups_per_scale"] = self._declare_groups(hp)
        return values

    def _declare_groups(self, hp):
        """One `num_groups_per_scale` choice per number of latent scales."""
        chosen = None
        for scales in self.search_space["num_latent_scales"]:
            with hp.conditional_scope("num_latent_scales", [scales]):
                value = hp.Choice(
                    "num_groups_per_scale",
                    self._groups_for_scales(self.search_space["num_groups_per_scale"], scales),
                )
            if value is not None:
                chosen = value
        return chosen

    def build(self, hp):
        """A compiled `NVAE` (optimizer built) for the values of `hp`.

        Raises:
            keras_tuner.errors.FailedTrialError: the values combine into an
                invalid configuration.
        """
        overrides = self.searched_values(hp)
        try:
            config = self.base_config.replace(**overrides)
        except ValueError as error:
            raise keras_tuner.errors.FailedTrialError(
                f"the hyper-parameters {overrides} give an invalid configuration: {error}"
            ) from None
        model = NVAE(config)
        # The schedules' length is known only in `fit`, which compiles again and
        # keeps this optimizer's state: an optimizer exists (and is built) now so
        # that a checkpoint loaded before `fit` (Hyperband) restores it.
        model.compile(total_steps=1)
        model.optimizer.build(model.trainable_variables)
        return model

    def _training_data(self, hp, model, data, batch_size):
        """(data, batch size) with a searched `batch_size` applied."""
        searched = "batch_size" in self.searched_values(hp)
        if isinstance(data, tf.data.Dataset):
            if searched:
                batch_size = model.config.batch_size
                if id(data) not in self._image_counts:
                    self._image_counts[id(data)] = _count_images(data)
                steps = math.ceil(self._image_counts[id(data)] / batch_size)
                data = data.rebatch(batch_size).apply(tf.data.experimental.assert_cardinality(steps))
            return data, None
        if data is None:
            raise ValueError("NVAEHyperModel.fit needs training data (`tuner.search(x, ...)`).")
        if searched or batch_size is None:
            batch_size = model.config.batch_size
        return data, batch_size

    def _schedule_epochs(self, hp, epochs):
        if self.max_epochs is not None:
            return int(self.max_epochs)
        if "tuner/epochs" in hp.values:
            raise ValueError(
                "With Hyperband, pass `max_epochs` to NVAEHyperModel (the Hyperband's "
                "`max_epochs`), so the schedules span the same steps in every bracket."
            )
        return int(epochs)

    def fit(self, hp, model, *args, **kwargs):
        """Train `model` for one trial; arguments are those of `tuner.search`.

        Args:
            hp: the trial's `HyperParameters`.
            model: the `NVAE` from `build`.
            *args: the training data (images or a dataset; NVAE has no targets).
            **kwargs: `keras.Model.fit` arguments (`validation_data`, `epochs`,
                `batch_size`, `steps_per_epoch`, `callbacks`, ...). A searched
                `batch_size` replaces the caller's and re-batches datasets.

        Returns:
            The `keras.callbacks.History`.

        Raises:
            keras_tuner.errors.FailedTrialError: non-finite loss or `val_bpd`.
        """
        if len(args) > 1:
            raise ValueError(
                "NVAEHyperModel.fit takes only the training images as a positional "
                "argument (NVAE has no targets); pass the rest by keyword."
            )
        data = args[0] if args else kwargs.pop("x", None)
        data, batch_size = self._training_data(hp, model, data, kwargs.pop("batch_size", None))
        epochs = kwargs.pop("epochs", 1)
        steps = inputs.epoch_steps(
            data,
            kwargs.get("steps_per_epoch") or None,
            batch_size,
            where="NVAEHyperModel.fit",
            remedy="Pass `steps_per_epoch` to `tuner.search`.",
        )
        _compile_for_schedule(model, self._schedule_epochs(hp, epochs) * steps, steps)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        callbacks += [_FixedSeedValidation(self.evaluation_seed), _FailOnNonFinite()]
        return model.fit(
            data, batch_size=batch_size, epochs=epochs, callbacks=callbacks, **kwargs
        )

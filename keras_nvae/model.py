"""`NVAE`: the deep hierarchical VAE of Vahdat & Kautz (2020) as a `keras.Model`."""

import keras

from keras_nvae import errors
from keras_nvae.network import NVAENetwork
from keras_nvae.official import legacy
from keras_nvae import presets as presets_lib
from keras_nvae.training import checkpoint_store
from keras_nvae.training.trainer import NVAETrainer


class _ClassProperty:
    def __init__(self, getter):
        self.getter = getter

    def __get__(self, instance, owner):
        return self.getter(owner)


@keras.saving.register_keras_serializable(package="keras_nvae")
class NVAE(NVAETrainer, NVAENetwork):
    """NVAE: a deep hierarchical VAE with residual cells and residual posteriors.

    The bottom-up encoder and the top-down decoder share the decoder's
    features (bidirectional inference); latent groups are arranged in scales,
    the first (top) group smallest. The architecture, numerics and objective
    follow the official PyTorch implementation (NVlabs/NVAE), so its
    checkpoints load (`keras_nvae.convert`) and reproduce its outputs.

    The network and its inference API (`call`, `sample`, `encode`, `decode`,
    `reconstruct`, `log_likelihood`) come from
    `keras_nvae.network.NVAENetwork`; the training policy (`compile`, `fit`,
    the objective, `train_step`, metrics) from
    `keras_nvae.training.NVAETrainer`.

    Args:
        config: an `NVAEConfig`, or a dict of its fields.
        **kwargs: base `keras.Model` arguments (e.g. `name`, `dtype`).

    Inputs are NHWC images, uint8 in [0, 255] or floating in [0, 1], with the
    configuration's `image_shape`. The model applies bit reduction
    (`num_x_bits`) and padding (`pad_to`) itself.

    Example:
    ```python
    model = keras_nvae.NVAE.from_preset("cifar10")
    model.compile()
    model.fit(train_ds, validation_data=test_ds, epochs=400)
    images = model.sample(16, temperature=0.7)
    ```
    """

    @_ClassProperty
    def presets(cls):
        """{name: description} of the built-in presets."""
        return presets_lib.preset_descriptions()

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Build an NVAE from a built-in preset or a preset directory.

        Args:
            preset: one of `NVAE.presets` (an untrained model), or the path
                of a directory written by `save_to_preset` (the model with its
                weights; reading it runs no code from it).
            **overrides: `NVAEConfig` fields to change. For a directory only
                fields that keep the shapes of every weight (e.g. `remat`,
                `official_dmol`, `num_x_bits`, the training settings).

        Returns:
            An `NVAE`.

        Raises:
            ValueError: an unknown preset name or an invalid override; for a
                directory, an override that changes weight shapes (naming
                the field).
            FileNotFoundError: no directory at the path.
            keras_nvae.loading.ModelFileError: a missing, truncated or
                foreign file in the directory.

        Example:
        ```python
        model = keras_nvae.NVAE.from_preset("cifar10")
        model.save_to_preset("nvae_cifar10")
        model = keras_nvae.NVAE.from_preset("nvae_cifar10", remat=True)
        ```
        """
        from keras_nvae import preset_directory

        if preset not in presets_lib.PRESETS and preset_directory.is_preset_directory(preset):
            return preset_directory.load_preset(cls, preset, **overrides)
        return cls(presets_lib.preset_config(preset, **overrides))

    def save_to_preset(
        self, preset_dir, description=None, source=None, include_training_state=False
    ):
        """Save the model as a preset directory that `NVAE.from_preset` loads.

        Writes `config.json`, `model.weights.h5` and `metadata.json` (and,
        when asked, the training state); see `keras_nvae.preset_directory`.

        Args:
            preset_dir: the directory.
            description: one line for `metadata.json`.
            source: where the weights come from, for `metadata.json`.
            include_training_state: also save the optimizer's state, step
                counters and noise seed state
                (`keras_nvae.preset_directory.load_training_state`).

        Returns:
            `preset_dir`.
        """
        from keras_nvae import preset_directory

        return preset_directory.save_preset(
            self, preset_dir, description, source, include_training_state
        )

    def get_config(self):
        config = super().get_config()
        config.update({"config": self.config.to_dict()})
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**dict(config))

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Keras' `load_weights`, all or nothing.

        Keras assigns the variables that fit and then raises for the rest; a
        host copy of the model's and optimizer's variables, kept during the
        load, restores them when it fails.

        Args:
            filepath: a `.weights.h5` or `.keras` file.
            skip_mismatch: Keras' option: warn about, and skip, variables
                that do not fit.
            **kwargs: other `keras.Model.load_weights` arguments.

        Raises:
            ValueError: the file holds the weights of a model with another
                configuration; the model is unchanged.
        """
        variables = checkpoint_store.state_variables(self)
        saved = [variable.numpy() for variable in variables]
        try:
            super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        except Exception as error:
            for variable, value in zip(variables, saved):
                variable.assign(value)
            if not isinstance(error, ValueError):
                raise
            raise ValueError(
                f"The weights in {str(filepath)!r} do not fit this NVAE "
                f"({errors.first_line(error, with_type=False)}); "
                "they were saved from a model with another configuration. Build the "
                "NVAE with that configuration first (a .keras file holds it: "
                "keras_nvae.loading.load_model). This model is unchanged."
            ) from error

    def load_own_variables(self, store):
        if legacy.is_legacy_store(store):
            legacy.load_legacy_weights(self, store)
        super().load_own_variables(store)

    def averaged_weights(self):
        """Context manager that holds the weight average (`ema_decay`) in the weights.

        Without `ema_decay` (or before the first training step) it changes
        nothing, and so it does inside a traced function. `evaluate` (also
        validation in `fit`), `evaluation.bits_per_dim`, `sample` and `export`
        use it.

        Returns:
            A context manager.

        Example:

        >>> with model.averaged_weights():
        ...     images = model.reconstruct(batch)
        """
        return self._guarded_update.averaged_weights(self.trainable_variables)

    def sample(self, *args, **kwargs):
        """`NVAEInference.sample`, with the weight average when `ema_decay` is set."""
        with self.averaged_weights():
            return super().sample(*args, **kwargs)

    def export(self, filepath, format="tf_saved_model", verbose=True, **kwargs):
        """Export a SavedModel with `sample` (serving default), `sample_seeded`,
        `reconstruct`, `reconstruct_seeded`, `encode` and `log_likelihood`
        endpoints; see `keras_nvae.export` for the signatures."""
        from keras_nvae.inference import export as export_lib

        if format != "tf_saved_model":
            raise ValueError(
                f"NVAE.export supports format='tf_saved_model' only, got {format!r}."
            )
        with self.averaged_weights():
            return export_lib.export_saved_model(self, filepath, verbose=verbose, **kwargs)

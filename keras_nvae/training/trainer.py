"""NVAE's training policy: objective, schedules, default optimizer, steps, metrics."""


import keras
import tensorflow as tf

from keras_nvae import compat
from keras_nvae.data import image_files
from keras_nvae.training import callbacks as nvae_callbacks
from keras_nvae import inputs
from keras_nvae.layers.conv import Conv2D, spectral_matrices
from keras_nvae.layers.normalization import BatchNorm
from keras_nvae.official import layout as official_layout
from keras_nvae.training import guarded_updates
from keras_nvae.training import step_guard
from keras_nvae.training import step_function as nvae_step_function
from keras_nvae.training import objectives
from keras_nvae.training import optimizers as nvae_optimizers

METRIC_NAMES = (
    "loss",
    "nelbo",
    "recon",
    "kl",
    "bpd",
    "kl_coeff",
    "spectral",
    "bn_reg",
    "active_groups",
)
# Steps the schedules span after a `compile()` given no `total_steps`, until the
# first `fit` sets their length: what `train_on_batch` and custom loops over
# `train_step` run with.
DEFAULT_TOTAL_STEPS = 10_000


class NVAETrainer(nvae_step_function.RuntimeStepFunctions):
    """How an NVAE network is trained: a mixin for `keras.Model` subclasses.

    It owns the training state (step counter, the number of steps the
    schedules span, the spectral regulariser's power-iteration vectors and
    the metrics) and the policy: the objective (reconstruction, balanced KL
    with warm-up, spectral and BN regularisers), the default optimizer and
    learning-rate schedule, `train_step`/`test_step`, and the workarounds
    that `tf.distribute` needs. Updates go through a
    `guarded_updates.GuardedUpdate` the trainer owns (skipped bad steps,
    clipping, the `ema_decay` weight average that `evaluate` and validation
    use). The network comes from the class it is mixed into
    (`keras_nvae.network.NVAENetwork`); `keras_nvae.NVAE` combines both.
    """

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.spectral_regularizer = objectives.SpectralRegularizer(
            name="spectral_regularizer"
        )
        self.kl_alphas = objectives.kl_balancing_alphas(self.config.groups_per_scale)
        self._trackers = {name: keras.metrics.Mean(name=name) for name in METRIC_NAMES}
        self._default_optimizer_wanted = True
        self._schedule_pending = False
        self._schedule_steps_per_epoch = None
        self.build((None,) + tuple(self.config.image_shape))

    def build(self, input_shape):
        built = self.built
        super().build(input_shape)
        if built:
            return
        self.global_step = self.add_weight(
            name="global_step",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.total_steps = self.add_weight(
            name="total_steps",
            shape=(),
            dtype="int64",
            initializer=keras.initializers.Constant(1),
            trainable=False,
        )
        layers = _flatten(official_layout.modules_in_official_order(self))
        self._conv_layers = [layer for layer in layers if isinstance(layer, Conv2D)]
        self._bn_layers = [layer for layer in layers if isinstance(layer, BatchNorm)]
        self.spectral_regularizer.build(
            [conv.spectral_matrix_shape for conv in self._conv_layers]
        )
        self._guarded_update = guarded_updates.GuardedUpdate.from_config(
            self.config, self.trainable_variables
        )
        self.step_guard = self._guarded_update.step_guard
        self.weight_average = self._guarded_update.weight_average

    # --------------------------------------------------------------- compile
    @property
    def metrics(self):
        return list(self._trackers.values())

    def compile(
        self,
        optimizer=None,
        total_steps=None,
        steps_per_epoch=None,
        jit_compile="auto",
        **kwargs,
    ):
        """Configure training.

        Args:
            optimizer: None for the preset's optimiser (PyTorch-semantics Adamax
                with eps 1e-3 and coupled L2 weight decay, linear warm-up then
                cosine decay), or any Keras optimizer.
            total_steps: steps the schedules span (learning-rate warm-up and
                cosine, KL warm-up, lambda annealing). Default: set by the
                first `fit` to the steps trained so far plus its
                `(epochs - initial_epoch) * steps_per_epoch`; until then
                (`train_on_batch`, a custom loop over `train_step`)
                `DEFAULT_TOTAL_STEPS` (10,000).
            steps_per_epoch: steps per epoch; with it the learning-rate cosine
                is stepped per epoch, as in the official code.
            jit_compile: passed to `keras.Model.compile`.
            **kwargs: other `keras.Model.compile` arguments.
        """
        self._schedule_steps_per_epoch = steps_per_epoch
        self._default_optimizer_wanted = optimizer is None
        super().compile(optimizer=None, jit_compile=jit_compile, **kwargs)
        if optimizer is not None:
            self.optimizer = _with_loss_scaling(keras.optimizers.get(optimizer))
        pending = total_steps is None
        self._set_schedule_span(DEFAULT_TOTAL_STEPS if pending else total_steps, pending)

    def _set_schedule_span(self, total_steps, pending=False):
        """Set the number of steps the schedules span: the one place it is set.

        Sets `total_steps` (read by the KL warm-up and lambda annealing) and,
        when `compile` was given no optimizer, the learning-rate schedule of
        the default optimizer (created on the first call) to span the same
        steps. With `pending`, the first `fit` sets the span again.
        """
        total_steps = max(int(total_steps), 1)
        self.total_steps.assign(total_steps)
        self._schedule_pending = pending
        if not self._default_optimizer_wanted:
            return
        schedule = nvae_optimizers.default_schedule(
            self.config, total_steps, self._schedule_steps_per_epoch
        )
        if self.optimizer is None:
            with self.distribute_strategy.scope():
                optimizer = nvae_optimizers.NVAEAdamax(
                    learning_rate=schedule, l2_weight_decay=self.config.weight_decay
                )
            self.optimizer = _with_loss_scaling(optimizer)
        else:
            _replace_schedule(self.optimizer, schedule)
            self.train_function = None  # The traced step holds the old schedule.

    def get_compile_config(self):
        if not self.compiled:
            return None
        custom = not self._default_optimizer_wanted
        return {
            "optimizer": keras.saving.serialize_keras_object(self.optimizer) if custom else None,
            "total_steps": None
            if self._schedule_pending
            else int(keras.ops.convert_to_numpy(self.total_steps)),
            "steps_per_epoch": self._schedule_steps_per_epoch,
            "jit_compile": self.jit_compile,
        }

    def compile_from_config(self, config):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(config.pop("optimizer"))
        self.compile(optimizer=optimizer, **config)
        if self.built and self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, epochs=1, steps_per_epoch=None, **kwargs):
        replicas = self.distribute_strategy.num_replicas_in_sync
        inputs.check_fit_data(x, kwargs, replicas, self.config)
        if self._schedule_pending:
            per_epoch = inputs.epoch_steps(x, steps_per_epoch, kwargs.get("batch_size"))
            epochs_run = int(epochs) - int(kwargs.get("initial_epoch", 0))
            trained = int(keras.ops.convert_to_numpy(self.global_step))
            self._set_schedule_span(trained + epochs_run * per_epoch)
        monitor = step_guard.NonFiniteStepMonitor(
            self.config.max_consecutive_nonfinite, self.describe_nonfinite
        )
        kwargs["callbacks"] = nvae_callbacks.with_progress_bar(
            [*(kwargs.get("callbacks") or []), monitor], kwargs.get("verbose", "auto")
        )
        with image_files.decode_errors_named():
            return super().fit(x, y, epochs=epochs, steps_per_epoch=steps_per_epoch, **kwargs)

    # ------------------------------------------------------------- objective
    def kl_coefficient(self, step=None):
        """KL warm-up coefficient beta at `step` (default: the current step)."""
        c = self.config
        step = self.global_step if step is None else step
        return objectives.kl_warmup_coefficient(
            step,
            self.total_steps,
            anneal_portion=c.kl_anneal_portion,
            const_portion=c.kl_const_portion,
            min_coeff=c.kl_const_coeff,
        )

    def regularization_terms(self, training=True):
        """(spectral, bn) regulariser values: sum of largest singular values of
        every convolution kernel (power iteration) and sum of max |gamma| of
        every BN layer."""
        spectral = self.spectral_regularizer(
            spectral_matrices(self._conv_layers), training=training
        )
        bn = objectives.batchnorm_regularizer([bn.gamma for bn in self._bn_layers])
        return spectral, bn

    def compute_objective(
        self, images, training=True, noise=None, kl_coeff=None, reg_coeff=None
    ):
        """All terms of the training objective for one batch (nats per image).

        The loss is `mean(recon + balanced KL) + reg_coeff * (spectral + bn)`,
        as in the official training. In training mode the spectral
        regulariser runs its power iteration and BN uses (and updates) batch
        statistics, so calling this changes the model's state.

        Args:
            images: uint8 or float image batch (see `NVAE.call`).
            training: training-mode forward pass and power iteration.
            noise: optional list of standard-normal noise tensors, one per
                latent group in decoder order (see `NVAE.call`).
            kl_coeff: KL warm-up coefficient beta; None for the schedule's
                value at the current step (`kl_coefficient()`).
            reg_coeff: weight lambda of the spectral and BN regularisers; None
                for the configured value (annealed with beta when
                `weight_decay_norm_anneal`; not added when
                `weight_decay_norm` is 0).

        Returns:
            dict with "loss" (what is minimised), "nelbo", "recon", "kl",
            "bpd", "active_groups", "kl_coeff", "spectral", "bn_reg",
            "reg_coeff", "kl_per_group", "kl_coeffs".
        """
        c = self.config
        out = self(images, training=training, noise=noise)
        beta = self.kl_coefficient() if kl_coeff is None else tf.cast(kl_coeff, tf.float32)
        balanced_kl, coeffs = objectives.balance_kl(
            out["kl"], beta, self.kl_alphas, balance=c.kl_balance
        )
        objective = tf.reduce_mean(out["recon_nll"] + balanced_kl)
        spectral, bn_reg = self.regularization_terms(training=training)
        reg_coeff, regularised = objectives.configured_regularization(c, beta, reg_coeff)
        if regularised:
            objective = objective + reg_coeff * (spectral + bn_reg)
        return {
            "loss": objective,
            **objectives.elbo_terms(self.config, out),
            "kl_coeff": beta,
            "spectral": spectral,
            "bn_reg": bn_reg,
            "reg_coeff": reg_coeff,
            "kl_per_group": out["kl"],
            "kl_coeffs": coeffs,
        }

    def converge_spectral(self, iterations):
        """Run the spectral regulariser's power iteration on the current kernels.

        Afterwards the next training step runs the usual
        `num_power_iterations` (4) iterations instead of the 40 of a first
        call. Useful after loading weights (which resets the iteration) to
        start, as when replaying an official run, from converged singular
        vectors.

        Args:
            iterations: number of power iterations (positive int).

        Returns:
            The summed spectral-norm estimate after the iterations (float32
            scalar tensor).

        Example:

        >>> model.converge_spectral(1000)
        """
        # One graph: run eagerly, the loop would dispatch every op of every
        # iteration from Python.
        def converge():
            matrices = spectral_matrices(self._conv_layers)
            return self.spectral_regularizer.converge(matrices, iterations)

        return tf.function(converge)()

    # ----------------------------------------------------------------- guard
    def evaluate(self, *args, **kwargs):
        averaged = self._guarded_update.averaged_weights(self.trainable_variables)
        with averaged, image_files.decode_errors_named():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with image_files.decode_errors_named():
            return super().predict(*args, **kwargs)

    def describe_nonfinite(self):
        """What was non-finite first in the last non-finite step, and what to do.

        Returns:
            `(source, advice)` strings, e.g. `("the input images (NaN or
            infinite pixels)", "Remove or repair ...")`.
        """
        names = guarded_updates.check_names(self.num_groups)
        return self._guarded_update.describe_nonfinite(names, self.trainable_variables)

    def bn_moving_variables(self):
        """The moving mean and variance of every BN layer, layer by layer."""
        return [v for layer in self._bn_layers for v in (layer.moving_mean, layer.moving_variance)]

    def _forward_state(self):
        """The variables a training-mode forward pass changes: BN statistics, power iteration."""
        return self.bn_moving_variables() + list(self.spectral_regularizer.variables)

    # ----------------------------------------------------------------- steps
    def train_step(self, data):
        images = inputs.unpack_images(data)
        terms, finite = self._train_update(images)
        self._update_trackers(
            *guarded_updates.finite_only(terms, finite, tf.shape(images)[0])
        )
        return self._logs(self._trackers)

    def _train_update(self, images, noise=None, kl_coeff=None, reg_coeff=None):
        """One optimisation step: the update of `fit` and of `replay_step`.

        Computes the objective (see `compute_objective`; None arguments take
        the schedules' values), differentiates it, applies the optimizer and
        advances `global_step`, unless the step is skipped (`GuardedUpdate`).

        Returns:
            `(terms, finite)`: the objective's terms (dict of tensors) before
            the update, and whether they and the gradients were finite.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.trainable_variables
        before = [tf.convert_to_tensor(v) for v in self._forward_state()]
        with tf.GradientTape() as tape:
            terms = self.compute_objective(
                images, training=True, noise=noise, kl_coeff=kl_coeff, reg_coeff=reg_coeff
            )
            loss = terms["loss"] / replicas
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        applied, finite = self._guarded_update.apply(
            self.optimizer,
            variables,
            grads,
            guarded_updates.finiteness_checks(images, terms),
            self._forward_state(),
            before,
        )
        self.global_step.assign_add(tf.cast(applied, "int64"))
        return terms, finite

    def replay_step(self, images, noise, kl_coeff, reg_coeff, learning_rate=None):
        """One training step with given noise, coefficients and learning rate.

        Runs the same update as `fit` (`train_step`), eagerly, with the
        latent noise, KL coefficient beta and regulariser weight lambda fixed
        by the caller instead of drawn or scheduled: for replaying a recorded
        run (see `keras_nvae.parity.check_trajectory`), debugging a step, or a
        custom training loop. The metrics are not updated.

        The learning rate is set on the optimizer before the step, so the
        model must be compiled with an optimizer whose learning rate is a
        float (e.g. `compile(optimizer=NVAEAdamax(learning_rate=1e-2))`), not
        a schedule; with `learning_rate=None` the optimizer's own is used.

        Args:
            images: one image batch (uint8 or float, see `NVAE.call`).
            noise: list of standard-normal noise arrays, one per latent group
                in decoder order, or None to draw it.
            kl_coeff: KL coefficient beta of this step.
            reg_coeff: weight lambda of the spectral and BN regularisers.
            learning_rate: learning rate of this step, or None.

        Returns:
            dict of the objective's terms before the update, as
            `compute_objective`.

        Raises:
            ValueError: the model is not compiled, or `learning_rate` is given
                while the optimizer follows a schedule.

        Example:

        >>> model.compile(optimizer=keras_nvae.optimizers.NVAEAdamax(1e-2))
        >>> terms = model.replay_step(images, noise, kl_coeff=0.5,
        ...                           reg_coeff=0.1, learning_rate=5e-3)
        """
        _prepare_replay(getattr(self, "optimizer", None), learning_rate, self.trainable_variables)
        return self._train_update(images, noise, kl_coeff=kl_coeff, reg_coeff=reg_coeff)[0]

    def test_step(self, data):
        images = inputs.unpack_images(data)
        values = objectives.elbo_terms(self.config, self(images, training=False))
        values["loss"] = values["nelbo"]
        self._update_trackers(values, tf.shape(images)[0])
        return self._logs(values)

    def _update_trackers(self, values, batch_size):
        # Weighted by the batch size so epoch means are per image even when the
        # last batch is smaller.
        weight = tf.cast(batch_size, tf.float32)
        for name, tracker in self._trackers.items():
            if name in values:
                tracker.update_state(values[name], sample_weight=weight)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # NVAE is built when it is constructed, so only the optimizer is left to
        # build. Keras' own version also all-reduces the first (uint8) batch,
        # which fails under MultiWorkerMirroredStrategy (Keras 3.15).
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def _logs(self, values):
        logs = {name: self._trackers[name].result() for name in values}
        logs.update(self._guarded_update.logs() if values is self._trackers else {})
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces step outputs along axis 0, which scalars lack under
            # MultiWorkerMirroredStrategy (Keras 3.15); the reduction of
            # shape-(1,) values gives back scalars.
            logs = {name: tf.reshape(value, (1,)) for name, value in logs.items()}
        return logs


def _with_loss_scaling(optimizer):
    """`optimizer`, under a `LossScaleOptimizer` when the policy is mixed_float16."""
    if keras.mixed_precision.global_policy().name == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        # The official code starts its gradient scaler at 2**10 (Keras: 2**15).
        return keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**10)
    return optimizer


def _replace_schedule(optimizer, schedule):
    """Give `optimizer` (or the one a `LossScaleOptimizer` wraps) a new learning-rate schedule."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    optimizer.learning_rate = schedule


def _prepare_replay(optimizer, learning_rate, variables):
    """Give `optimizer` the learning rate of a replayed step and build it for `variables`.

    Raises a clear error when there is no optimizer, or when `learning_rate`
    is given and `optimizer` follows a schedule.
    """
    if optimizer is None:
        raise ValueError(
            "NVAE.replay_step needs an optimizer: call "
            "model.compile(optimizer=keras_nvae.optimizers.NVAEAdamax(...)) first."
        )
    if learning_rate is not None:
        _set_learning_rate(optimizer, learning_rate)
    if not optimizer.built:
        optimizer.build(variables)


def _set_learning_rate(optimizer, learning_rate):
    """Assign a float learning rate; a clear error when `optimizer` follows a schedule."""
    try:
        optimizer.learning_rate = float(learning_rate)
    except TypeError:
        raise ValueError(
            "NVAE.replay_step(learning_rate=...) sets the optimizer's learning "
            "rate, but this optimizer follows a LearningRateSchedule. Compile "
            "with an optimizer built with a float learning rate, e.g. "
            "model.compile(optimizer=keras_nvae.optimizers.NVAEAdamax(1e-2)), or "
            "pass learning_rate=None."
        ) from None


def _flatten(modules):
    """Every layer under `modules`, in the order Keras flattens a model made of them.

    The convolutions and BN layers are kept in this order, and so is the
    spectral regulariser's state, whose variable order saved files depend on.
    """
    ordered, stack = [], list(reversed(modules))
    while stack:
        layer = stack.pop()
        ordered.append(layer)
        stack.extend(compat.direct_sublayers(layer))
    return ordered


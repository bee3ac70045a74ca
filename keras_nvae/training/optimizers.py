"""Optimizer and learning-rate schedule used to train NVAE.

The official NVAE implementation trains with a fused Adamax that follows
PyTorch's semantics (epsilon inside the infinity norm, coupled L2 weight
decay) and a linear warm-up followed by cosine annealing. Both are
reproduced here so that training dynamics match the reference code.
"""

import itertools
import math

import keras
import tensorflow as tf
from keras import ops

from keras_nvae import compat


@keras.saving.register_keras_serializable(package="keras_nvae")
class NVAEAdamax(keras.optimizers.Optimizer):
    """Adamax with PyTorch semantics and coupled L2 weight decay.

    This is the optimizer of the official NVAE code. It differs from
    `keras.optimizers.Adamax` in two ways: epsilon is added to the absolute
    gradient *inside* the infinity-norm update, and weight decay is a
    classic L2 penalty folded into the gradient (applied to every variable)
    rather than a decoupled decay. For each variable `p` with gradient `g`:

    ```python
    t += 1
    g = g + l2_weight_decay * p
    m = beta_1 * m + (1 - beta_1) * g
    u = max(beta_2 * u, abs(g) + epsilon)
    p = p - learning_rate / (1 - beta_1 ** t) * m / u
    ```

    Keras' own decoupled `weight_decay` argument is not supported; use
    `l2_weight_decay` instead.

    Args:
        learning_rate: A float or a
            `keras.optimizers.schedules.LearningRateSchedule`. Defaults to
            `1e-2`, the NVAE default.
        beta_1: Exponential decay rate of the first moment. Defaults to
            `0.9`.
        beta_2: Exponential decay rate of the infinity norm. Defaults to
            `0.999`.
        epsilon: Constant added to `abs(g)` in the infinity-norm update.
            Defaults to `1e-3`, the value used by NVAE.
        l2_weight_decay: Coefficient of the coupled L2 penalty added to the
            gradient of every variable. Defaults to `3e-4`.
        **kwargs: Other keyword arguments of `keras.optimizers.Optimizer`
            (`clipnorm`, `global_clipnorm`, `use_ema`, `name`, ...).

    Example:

    >>> schedule = WarmupCosineSchedule(1e-2, 1e-4, 100, 1000)
    >>> optimizer = NVAEAdamax(learning_rate=schedule)
    """

    def __init__(
        self,
        learning_rate=1e-2,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-3,
        l2_weight_decay=3e-4,
        **kwargs,
    ):
        if kwargs.pop("weight_decay", None) is not None:
            raise ValueError(
                "`NVAEAdamax` applies coupled L2 weight decay; pass "
                "`l2_weight_decay` instead of `weight_decay`."
            )
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.l2_weight_decay = l2_weight_decay

    def build(self, var_list):
        """Create the first-moment and infinity-norm slots.

        The slots of all variables live in two flat vectors (`momentum` and
        `norm`, the variables' elements concatenated in `var_list` order), so
        one step is a handful of large element-wise ops instead of a dozen
        small ones per variable, as the official fused Adamax. This keeps the
        training graph of a deep NVAE (over a thousand variables) small.

        Args:
            var_list: List of model variables to optimize.
        """
        if self.built:
            return
        dtypes = {keras.backend.standardize_dtype(v.dtype) for v in var_list}
        if len(dtypes) > 1:
            raise ValueError(
                "`NVAEAdamax` keeps its slots in one vector and needs variables "
                f"of one dtype; got {sorted(dtypes)}."
            )
        super().build(var_list)
        sizes = [math.prod(v.shape) for v in var_list]
        self._offsets = [0, *itertools.accumulate(sizes)][:-1]
        self._sizes = sizes
        total = sum(sizes)
        dtype = dtypes.pop() if dtypes else "float32"
        self._momentum = self.add_variable((total,), dtype=dtype, name="momentum")
        self._norm = self.add_variable((total,), dtype=dtype, name="norm")

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        variables = [
            v.value if isinstance(v, keras.Variable) else v for v in trainable_variables
        ]
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, variables)))
        indices = [self._get_variable_index(v) for v in trainable_variables]
        compat.merge_call(
            self._distributed_fused_update, self, grads_and_vars, indices, learning_rate
        )

    def _distributed_fused_update(
        self, distribution, grads_and_vars, indices, learning_rate
    ):
        grads = [g for g, _ in grads_and_vars]
        variables = [v for _, v in grads_and_vars]
        # `update` runs the function once per device with that device's copy of
        # the slots, variables and (all-reduced) gradients.
        distribution.extended.update(
            self._momentum.value,
            self._fused_update,
            args=(self._norm.value, grads, variables, indices, learning_rate),
            group=False,
        )

    def _segment(self, slot, index):
        """The part of a flat slot that belongs to variable `index`."""
        return slot[self._offsets[index] : self._offsets[index] + self._sizes[index]]

    def _fused_update(self, momentum, norm, grads, variables, indices, learning_rate):
        dtype = momentum.dtype
        sizes = [self._sizes[i] for i in indices]
        complete = indices == list(range(len(self._sizes)))

        vector = tf.constant([-1])  # one shape constant for all the reshapes

        def flat(tensors):
            return tf.concat([tf.reshape(tf.cast(t, dtype), vector) for t in tensors], 0)

        g, p = flat(grads), flat(variables)
        if complete:
            m, u = tf.convert_to_tensor(momentum), tf.convert_to_tensor(norm)
        else:
            m = tf.concat([self._segment(momentum, i) for i in indices], 0)
            u = tf.concat([self._segment(norm, i) for i in indices], 0)
        if self.l2_weight_decay:
            g = g + self.l2_weight_decay * p
        m = m + (g - m) * (1.0 - self.beta_1)
        u = tf.maximum(self.beta_2 * u, tf.abs(g) + self.epsilon)
        step = tf.cast(self.iterations + 1, dtype)
        bias_correction = 1.0 - tf.pow(tf.cast(self.beta_1, dtype), step)
        step_size = tf.cast(learning_rate, dtype) / bias_correction
        for variable, update in zip(variables, tf.split(step_size * m / u, sizes)):
            variable.assign_sub(tf.reshape(update, variable.shape))
        if complete:
            momentum.assign(m)
            norm.assign(u)
            return
        # Variables without a gradient keep their segments of the slots.
        updated = dict(zip(indices, zip(tf.split(m, sizes), tf.split(u, sizes))))
        for k, slot in enumerate((momentum, norm)):
            segments = [
                updated[i][k] if i in updated else self._segment(slot, i)
                for i in range(len(self._sizes))
            ]
            slot.assign(tf.concat(segments, 0))

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "l2_weight_decay": self.l2_weight_decay,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_nvae")
class WarmupCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up followed by cosine annealing, as in NVAE.

    For `step < warmup_steps` the rate grows linearly from 0:
    `peak_learning_rate * step / warmup_steps`. Afterwards it follows

    ```python
    min_lr + (peak_lr - min_lr) * (1 + cos(pi * e / t_max)) / 2
    ```

    where, when `steps_per_epoch` is None, `e = step - warmup_steps` and
    `t_max = total_steps - warmup_steps - 1`, so the minimum is reached at
    the last step `total_steps - 1`. When `steps_per_epoch` is given, the
    official per-epoch stepping of `CosineAnnealingLR` is emulated: the rate
    is constant within an epoch, `e = step // steps_per_epoch -
    warmup_steps // steps_per_epoch` and `t_max = total_epochs -
    warmup_epochs - 1` with `total_epochs = total_steps // steps_per_epoch`.
    From `total_steps` on, the rate is `min_learning_rate`. A non-positive
    `t_max` keeps the peak rate until `total_steps`.

    Args:
        peak_learning_rate: Rate reached at the end of warm-up.
        min_learning_rate: Final rate of the cosine annealing.
        warmup_steps: Number of linear warm-up steps (may be 0).
        total_steps: Total number of training steps.
        steps_per_epoch: Optional number of steps per epoch. If set, the
            cosine part is stepped once per epoch as in the official code.

    Example:

    >>> schedule = WarmupCosineSchedule(1e-2, 1e-4, warmup_steps=100,
    ...                                 total_steps=1000)
    >>> optimizer = NVAEAdamax(learning_rate=schedule)
    """

    def __init__(
        self,
        peak_learning_rate,
        min_learning_rate,
        warmup_steps,
        total_steps,
        steps_per_epoch=None,
    ):
        self.peak_learning_rate = peak_learning_rate
        self.min_learning_rate = min_learning_rate
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch

    def __call__(self, step):
        """Return the learning rate at `step`.

        Args:
            step: Integer or float scalar (tensor), the optimizer iteration.

        Returns:
            A float32 scalar tensor.
        """
        step = ops.cast(step, "float32")
        peak = ops.cast(self.peak_learning_rate, "float32")
        low = ops.cast(self.min_learning_rate, "float32")
        warmup = float(self.warmup_steps)

        if self.steps_per_epoch:
            period = float(self.steps_per_epoch)
            position = ops.floor(step / period)
            start = float(self.warmup_steps // self.steps_per_epoch)
            t_max = self.total_steps // self.steps_per_epoch - start - 1
        else:
            position = step
            start = warmup
            t_max = self.total_steps - warmup - 1
        progress = ops.clip((position - start) / max(t_max, 1), 0.0, 1.0)
        cosine = low + (peak - low) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        warmup_rate = peak * step / max(warmup, 1.0)
        rate = ops.where(step < warmup, warmup_rate, cosine)
        return ops.where(step >= float(self.total_steps), low, rate)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "min_learning_rate": self.min_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
        }


def default_schedule(config, total_steps, steps_per_epoch=None):
    """The preset's learning-rate schedule: linear warm-up, then cosine decay.

    Args:
        config: an `NVAEConfig` (`learning_rate`, `learning_rate_min`,
            `warmup_epochs`, `epochs`).
        total_steps: steps the schedule spans.
        steps_per_epoch: steps per epoch, or None; with it the warm-up lasts
            `warmup_epochs` epochs and the cosine is stepped per epoch.

    Returns:
        A `WarmupCosineSchedule`.
    """
    if steps_per_epoch:
        warmup = int(config.warmup_epochs * steps_per_epoch)
    else:
        warmup = int(round(total_steps * config.warmup_epochs / config.epochs))
    return WarmupCosineSchedule(
        peak_learning_rate=config.learning_rate,
        min_learning_rate=config.learning_rate_min,
        warmup_steps=min(warmup, total_steps),
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )

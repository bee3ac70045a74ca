"""Optimizer and learning-rate schedule used to train NVAE.

The official NVAE implementation trains with a fused Adamax that follows
PyTorch's semantics (epsilon inside the infinity norm, coupled L2 weight
decay) and a linear warm-up followed by cosine annealing. Both are
reproduced here so that training dynamics match the reference code.
"""

import math

import keras
from keras import ops


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

        Args:
            var_list: List of model variables to optimize.
        """
        if self.built:
            return
        super().build(var_list)
        self._momentums = []
        self._norms = []
        for variable in var_list:
            self._momentums.append(
                self.add_variable_from_reference(variable, name="momentum")
            )
            self._norms.append(
                self.add_variable_from_reference(variable, name="norm")
            )

    def update_step(self, gradient, variable, learning_rate):
        """Apply one Adamax update to `variable`.

        Args:
            gradient: Gradient of the loss with respect to `variable`.
            variable: The model variable to update.
            learning_rate: Learning rate of the current step.
        """
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        u = self._norms[index]

        if self.l2_weight_decay:
            gradient = ops.add(
                gradient,
                ops.multiply(ops.cast(self.l2_weight_decay, dtype), variable),
            )
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - beta_1))
        self.assign(
            u,
            ops.maximum(
                ops.multiply(beta_2, u),
                ops.add(ops.abs(gradient), ops.cast(self.epsilon, dtype)),
            ),
        )
        step_size = ops.divide(lr, 1 - ops.power(beta_1, step))
        self.assign_sub(variable, ops.multiply(step_size, ops.divide(m, u)))

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

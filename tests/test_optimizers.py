import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_nvae.training.optimizers import NVAEAdamax
from keras_nvae.training.optimizers import WarmupCosineSchedule

SHAPES = [(3, 4), (5,), (2, 2, 3)]


def _random_problem(seed, num_steps):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [
        [rng.normal(size=s).astype(np.float32) for s in SHAPES]
        for _ in range(num_steps)
    ]
    # Exercise the epsilon floor of the infinity norm.
    grads[0][1][:2] = 0.0
    return params, grads


def _torch_adamax(params, grads, learning_rates, beta_1=0.9, beta_2=0.999,
                  epsilon=1e-3, weight_decay=3e-4):
    """NumPy version of the PyTorch / NVAE Adamax update."""
    params = [p.astype(np.float64) for p in params]
    m = [np.zeros_like(p) for p in params]
    u = [np.zeros_like(p) for p in params]
    for t, (step_grads, lr) in enumerate(zip(grads, learning_rates), start=1):
        for i, g in enumerate(step_grads):
            g = g + weight_decay * params[i]
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            u[i] = np.maximum(beta_2 * u[i], np.abs(g) + epsilon)
            params[i] = params[i] - lr / (1 - beta_1**t) * m[i] / u[i]
    return params


def _check_close(variables, expected):
    for variable, value in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-6,
                                   atol=1e-6)


def test_adamax_matches_pytorch_formula():
    params, grads = _random_problem(0, 6)
    variables = [tf.Variable(p) for p in params]
    optimizer = NVAEAdamax(learning_rate=1e-2)
    for step_grads in grads:
        optimizer.apply([tf.constant(g) for g in step_grads], variables)
    _check_close(variables, _torch_adamax(params, grads, [1e-2] * 6))


def test_adamax_custom_hyperparameters_without_weight_decay():
    params, grads = _random_problem(1, 5)
    variables = [tf.Variable(p) for p in params]
    optimizer = NVAEAdamax(
        learning_rate=3e-3,
        beta_1=0.8,
        beta_2=0.99,
        epsilon=1e-2,
        l2_weight_decay=0.0,
    )
    for step_grads in grads:
        optimizer.apply([tf.constant(g) for g in step_grads], variables)
    expected = _torch_adamax(
        params, grads, [3e-3] * 5, beta_1=0.8, beta_2=0.99, epsilon=1e-2,
        weight_decay=0.0,
    )
    _check_close(variables, expected)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_adamax_with_schedule_in_compiled_function(jit_compile):
    params, grads = _random_problem(2, 8)
    schedule = WarmupCosineSchedule(1e-2, 1e-4, warmup_steps=3, total_steps=8)
    variables = [tf.Variable(p) for p in params]
    optimizer = NVAEAdamax(learning_rate=schedule, l2_weight_decay=1e-2)
    optimizer.build(variables)

    @tf.function(jit_compile=jit_compile)
    def train_step(step_grads):
        optimizer.apply(step_grads, variables)

    for step_grads in grads:
        train_step([tf.constant(g) for g in step_grads])
    learning_rates = [float(schedule(step)) for step in range(8)]
    expected = _torch_adamax(params, grads, learning_rates, weight_decay=1e-2)
    _check_close(variables, expected)
    assert int(optimizer.iterations.numpy()) == 8


def test_adamax_inside_loss_scale_optimizer():
    params, grads = _random_problem(3, 4)
    variables = [tf.Variable(p) for p in params]
    optimizer = keras.optimizers.LossScaleOptimizer(
        NVAEAdamax(learning_rate=1e-2), initial_scale=128.0
    )
    for step_grads in grads:
        optimizer.apply([tf.constant(128.0 * g) for g in step_grads], variables)
    _check_close(variables, _torch_adamax(params, grads, [1e-2] * 4))


def test_adamax_under_mirrored_strategy():
    params, grads = _random_problem(4, 3)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        variables = [keras.Variable(p) for p in params]
        optimizer = NVAEAdamax(learning_rate=1e-2)
        optimizer.build(variables)

    @tf.function
    def train_step(step_grads):
        def replica_step():
            # The loss is linear in the variables, so its gradients are
            # exactly `step_grads`.
            with tf.GradientTape() as tape:
                loss = tf.add_n(
                    [
                        tf.reduce_sum(g * v)
                        for g, v in zip(step_grads, variables)
                    ]
                )
            optimizer.apply(tape.gradient(loss, variables), variables)

        strategy.run(replica_step)

    for step_grads in grads:
        train_step([tf.constant(g) for g in step_grads])
    _check_close(variables, _torch_adamax(params, grads, [1e-2] * 3))


def test_adamax_trains_keras_model():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(
        optimizer=NVAEAdamax(learning_rate=5e-2), loss="mse", jit_compile=True
    )
    history = model.fit(x, y, batch_size=16, epochs=25, verbose=0)
    assert history.history["loss"][-1] < 0.1 * history.history["loss"][0]


def test_adamax_config_round_trip():
    schedule = WarmupCosineSchedule(2e-2, 1e-4, 10, 100, steps_per_epoch=5)
    optimizer = NVAEAdamax(
        learning_rate=schedule,
        beta_1=0.8,
        epsilon=1e-4,
        l2_weight_decay=1e-3,
        clipnorm=1.0,
    )
    config = optimizer.get_config()
    assert "weight_decay" not in config
    assert config["l2_weight_decay"] == 1e-3
    restored = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert isinstance(restored, NVAEAdamax)
    assert restored.get_config() == config


def test_adamax_rejects_decoupled_weight_decay():
    with pytest.raises(ValueError, match="l2_weight_decay"):
        NVAEAdamax(weight_decay=1e-4)


# Learning-rate schedule.


def _cosine(low, peak, position, period):
    return low + (peak - low) * (1 + math.cos(math.pi * position / period)) / 2


def test_schedule_per_step_values():
    peak, low = 1e-2, 1e-4
    schedule = WarmupCosineSchedule(peak, low, warmup_steps=100,
                                    total_steps=1000)
    expected = {
        0: 0.0,
        1: peak / 100,
        50: peak / 2,
        99: peak * 0.99,
        100: peak,
        101: _cosine(low, peak, 1, 899),
        550: _cosine(low, peak, 450, 899),
        998: _cosine(low, peak, 898, 899),
        999: low,
        1000: low,
        5000: low,
    }
    for step, value in expected.items():
        np.testing.assert_allclose(float(schedule(step)), value, rtol=1e-5,
                                   err_msg=f"step {step}")


def test_schedule_per_epoch_values():
    peak, low = 1e-2, 1e-4
    # 7 epochs of 10 steps, 2 warm-up epochs: t_max = 7 - 2 - 1 = 4.
    schedule = WarmupCosineSchedule(
        peak, low, warmup_steps=20, total_steps=70, steps_per_epoch=10
    )
    for step in range(20):
        np.testing.assert_allclose(float(schedule(step)), peak * step / 20,
                                   rtol=1e-5)
    for step in range(20, 70):
        epoch_from_warmup_end = step // 10 - 2
        np.testing.assert_allclose(
            float(schedule(step)),
            _cosine(low, peak, epoch_from_warmup_end, 4),
            rtol=1e-5,
            err_msg=f"step {step}",
        )
    np.testing.assert_allclose(float(schedule(70)), low, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(10_000)), low, rtol=1e-5)


def test_schedule_one_step_epochs_equal_per_step_schedule():
    per_step = WarmupCosineSchedule(1e-3, 1e-5, 7, 50)
    per_epoch = WarmupCosineSchedule(1e-3, 1e-5, 7, 50, steps_per_epoch=1)
    steps = tf.range(60)
    np.testing.assert_allclose(per_epoch(steps), per_step(steps), rtol=1e-6)


@pytest.mark.parametrize(
    "warmup_steps, total_steps, steps_per_epoch",
    [(0, 100, None), (0, 100, 10), (99, 100, None), (90, 100, 10),
     (100, 100, None), (0, 1, None), (0, 0, None)],
)
def test_schedule_edge_cases_are_finite(warmup_steps, total_steps,
                                        steps_per_epoch):
    schedule = WarmupCosineSchedule(
        1e-2, 1e-4, warmup_steps, total_steps, steps_per_epoch
    )
    values = schedule(tf.range(total_steps + 5)).numpy()
    assert np.all(np.isfinite(values))
    assert np.all(values >= 0.0)
    assert np.all(values <= 1e-2 * (1 + 1e-6))
    np.testing.assert_allclose(values[-1], 1e-4, rtol=1e-5)


def test_schedule_without_warmup_starts_at_peak():
    schedule = WarmupCosineSchedule(1e-2, 1e-4, 0, 100)
    np.testing.assert_allclose(float(schedule(0)), 1e-2, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(99)), 1e-4, rtol=1e-5)


def test_schedule_in_compiled_function_with_variable_step():
    schedule = WarmupCosineSchedule(1e-2, 1e-4, 10, 100, steps_per_epoch=5)
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function(jit_compile=True)
    def advance():
        step.assign_add(7)
        return schedule(step)

    values = [float(advance()) for _ in range(15)]
    expected = [float(schedule(7 * (i + 1))) for i in range(15)]
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_schedule_config_round_trip():
    schedule = WarmupCosineSchedule(2e-2, 1e-4, 10, 100, steps_per_epoch=5)
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(restored, WarmupCosineSchedule)
    assert restored.get_config() == schedule.get_config()
    np.testing.assert_allclose(restored(tf.range(120)), schedule(tf.range(120)))


def test_adamax_skips_variables_without_gradients():
    # Keras drops (None) gradients before the update: those variables and their
    # slots must stay as they are while the others follow the formula.
    params, grads = _random_problem(3, 3)
    variables = [tf.Variable(p) for p in params]
    optimizer = NVAEAdamax(learning_rate=1e-2)
    optimizer.apply([tf.constant(g) for g in grads[0]], variables)
    momentum_before = optimizer.variables[-2].numpy().copy()
    for step_grads in grads[1:]:
        optimizer.apply([tf.constant(step_grads[0]), None, tf.constant(step_grads[2])], variables)
    expected = _torch_adamax(params, grads[:1], [1e-2])
    np.testing.assert_allclose(variables[1].numpy(), expected[1], rtol=1e-6, atol=1e-6)
    size0, size1 = 12, 5
    np.testing.assert_array_equal(
        optimizer.variables[-2].numpy()[size0 : size0 + size1],
        momentum_before[size0 : size0 + size1],
    )
    # Variable 0 saw all three gradients, at steps 1..3.
    ref = _torch_adamax([params[0]], [[g[0]] for g in grads], [1e-2] * 3)
    np.testing.assert_allclose(variables[0].numpy(), ref[0], rtol=1e-6, atol=1e-6)


def test_adamax_graph_is_small_for_many_variables():
    # The fused update: a few ops per variable (flatten, split, assign), not a
    # dozen (the per-variable update_step took 30). 200 variables stay under 12 each,
    # the placeholders of this test included.
    variables = [tf.Variable(tf.ones((3, 2))) for _ in range(200)]
    optimizer = NVAEAdamax(learning_rate=1e-2)
    optimizer.build(variables)

    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    graph = step.get_concrete_function([tf.TensorSpec((3, 2))] * 200).graph
    assert len(graph.get_operations()) < 12 * 200

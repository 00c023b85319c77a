"""GradwatchCallback under a real Keras 3 `model.fit` on the TensorFlow backend (CPU, small models)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "tensorflow"  # set explicitly: the tests are of the TF backend
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

tf = pytest.importorskip("tensorflow", reason="the keras extra (tensorflow-cpu) is not installed")
keras = pytest.importorskip("keras", reason="the keras extra (keras) is not installed")
try:  # two cores shared by the suite: one thread each way
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:  # TensorFlow already initialised by an earlier test module
    pass

import gradwatch as gw  # noqa: E402
from gradwatch.cli import main  # noqa: E402
from gradwatch.integrations.keras import GradwatchCallback  # noqa: E402
from gradwatch.integrations.keras._anatomy import analyse, build_anatomy  # noqa: E402


def circles(n: int = 512) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_circles

    x, y = make_circles(n, noise=0.1, factor=0.5, random_state=0)
    return x.astype("float32"), y.astype("float32")


def fresh() -> None:
    """Layer names from 0 again (`dense`, `dense_1`...) and the same initial weights."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)


def mlp(depth: int, width: int, activation: str, n_in: int = 2, init: str = "glorot_uniform") -> keras.Model:
    fresh()
    hidden = [keras.layers.Dense(width, activation=activation, kernel_initializer=init) for _ in range(depth)]
    return keras.Sequential([keras.Input((n_in,)), *hidden, keras.layers.Dense(1, activation="sigmoid")])


def above_info(d: gw.Diagnosis) -> list[gw.Finding]:
    return [f for f in d.findings if f.severity > gw.Severity.INFO]


# -- the statistics are the gradients the optimizer applies -------------------------------------
@pytest.mark.parametrize("jit", [True, False])
def test_recorded_statistics_equal_a_gradient_tape_on_the_same_batch_and_weights(tmp_path, jit: bool) -> None:
    x, y = circles(64)
    model = mlp(2, 8, "relu")
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy", jit_compile=jit)
    before = [v.numpy().copy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = keras.losses.binary_crossentropy(y[:, None], model(x, training=True))
        loss = tf.reduce_mean(loss)
    grads = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    cb = GradwatchCallback(every=1, log=tmp_path / "run.jsonl", verbose=False)
    model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    after = [v.numpy() for v in model.trainable_variables]
    tl = cb.recorder.timeline
    assert tl.layers == ["dense", "dense_1", "dense_2"] and len(tl) == 1
    for j in range(len(tl.layers)):  # each Dense owns a kernel and a bias, in that order
        g = np.concatenate([grads[2 * j].ravel(), grads[2 * j + 1].ravel()]).astype(np.float64)
        w0 = np.concatenate([before[2 * j].ravel(), before[2 * j + 1].ravel()]).astype(np.float64)
        w1 = np.concatenate([after[2 * j].ravel(), after[2 * j + 1].ravel()]).astype(np.float64)
        col = {m: float(tl.metric(m)[1][0, j]) for m in gw.record.timeline.LAYER_METRICS}
        assert col["grad_norm"] == pytest.approx(np.linalg.norm(g), rel=1e-5)
        assert col["grad_rms"] == pytest.approx(np.linalg.norm(g) / np.sqrt(g.size), rel=1e-5)
        assert col["grad_max"] == pytest.approx(np.abs(g).max(), rel=1e-5)
        assert col["grad_zero_frac"] == pytest.approx(np.mean(g == 0), abs=1e-12)
        assert col["grad_nonfinite"] == 0
        assert col["weight_norm"] == pytest.approx(np.linalg.norm(w1), rel=1e-6)
        assert col["update_norm"] == pytest.approx(np.linalg.norm(w1 - w0), rel=1e-5)
        assert col["update_norm"] == pytest.approx(0.5 * np.linalg.norm(g), rel=1e-4)  # plain SGD
    assert tl.losses.column("loss", "loss")[0] == pytest.approx(float(loss), rel=1e-5)
    # the optimizer and the layers are as they were
    assert "apply" not in vars(model.optimizer)
    assert all("call" not in vars(layer) for layer in model.layers)


def test_clipnorm_is_measured_as_the_optimizer_applies_it() -> None:
    x, y = circles(64)
    model = mlp(1, 8, "tanh")
    model.compile(optimizer=keras.optimizers.SGD(0.1, clipnorm=1e-3), loss="binary_crossentropy")
    cb = GradwatchCallback(every=1, verbose=False)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[cb])
    _, norms = cb.recorder.timeline.metric("grad_norm")
    # clipnorm clips each variable to norm 1e-3: a layer (kernel and bias) to at most sqrt(2) of it
    assert np.all(norms[0] <= np.sqrt(2) * 1e-3 * (1 + 1e-5))


def test_each_steps_loss_is_the_loss_of_its_batch_at_the_weights_it_started_from() -> None:
    x, y = circles(96)
    model = mlp(1, 8, "tanh")
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy", jit_compile=False)

    seen: list[list[np.ndarray]] = []  # the weights each step starts from
    starts = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: seen.append(model.get_weights()))
    cb = GradwatchCallback(every=100, verbose=False)
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[starts, cb])
    recorded = cb.recorder.timeline.losses.column("loss", "loss")
    assert len(recorded) == len(seen) == 6
    probe = mlp(1, 8, "tanh")
    for step, weights in enumerate(seen):
        probe.set_weights(weights)
        batch = slice(32 * (step % 3), 32 * (step % 3 + 1))
        expected = keras.losses.binary_crossentropy(y[batch, None], probe(x[batch])).numpy().mean()
        assert recorded[step] == pytest.approx(expected, rel=1e-4), step


def test_watching_does_not_change_training() -> None:
    x, y = circles(128)
    weights = []
    for callbacks in ([], [GradwatchCallback(every=2, verbose=False)]):
        model = mlp(2, 8, "relu")
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", jit_compile=False)
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
        weights.append([v.numpy() for v in model.trainable_variables])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_gradient_through_time_equals_a_gradient_tape_on_the_layer_input() -> None:
    fresh()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 10, 3)).astype("float32"), rng.standard_normal((16, 1)).astype("float32")
    model = keras.Sequential([keras.Input((10, 3)), keras.layers.SimpleRNN(6, name="rnn"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_mean(tf.square(model(xt, training=True) - y))
    gx, gk = tape.gradient(loss, [xt, model.get_layer("rnn").cell.kernel])
    expected = np.sqrt(np.sum(np.square(gx.numpy().astype(np.float64)), axis=(0, 2)))
    cb = GradwatchCallback(every=1, verbose=False)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    ((step, profile),) = cb.recorder.timeline.profiles.get("grad_t/rnn")
    assert step == 0 and len(profile) == 10
    np.testing.assert_allclose(profile, expected, rtol=1e-5)
    # the identity that reads the profile passes no gradient to the kernel it takes
    _, kernel_grad = cb.recorder.timeline.metric("grad_max")
    assert kernel_grad[0, 0] >= np.abs(gk.numpy()).max() * (1 - 1e-5)


# -- diagnoses ----------------------------------------------------------------------------------
def test_deep_sigmoid_net_on_circles_is_diagnosed_with_a_vanishing_gradient_from_saturating_activations(tmp_path, capsys) -> None:
    x, y = circles()
    model = mlp(10, 16, "sigmoid")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    log = tmp_path / "run.jsonl"
    cb = GradwatchCallback(every=4, log=log)
    model.fit(x, y, batch_size=32, epochs=5, verbose=0, callbacks=[cb])
    d = cb.diagnosis
    assert d is not None and "vanishing_gradient" in capsys.readouterr().out  # printed at the end of fit
    vanishing = next(f for f in d.findings if f.kind == gw.Kind.VANISHING_GRADIENT)
    assert vanishing.severity >= gw.Severity.WARNING and "dense" in vanishing.layers
    assert vanishing.causes[0] == "saturating_activations"
    # the saturated share is measured at every hidden sigmoid (in the step, as the outputs)
    names, sat = cb.recorder.timeline.metric("act_sat_frac")
    assert "dense:sigmoid" in names and np.all((sat >= 0) & (sat <= 1))
    assert cb.recorder.timeline.sites["dense_10:sigmoid"]["output"] is True
    # the log reads back to the same verdict, and gradwatch report renders it
    run = gw.load(log)
    assert len(run) == len(cb.recorder.timeline) == 20
    assert run.header["settings"]["framework"] == "keras"
    assert [f.kind for f in run.diagnose().findings] == [f.kind for f in d.findings]
    assert main(["report", str(log)]) == 0
    assert "vanishing_gradient" in capsys.readouterr().out


def test_healthy_relu_net_draws_no_finding_above_info() -> None:
    x, y = circles()
    model = mlp(3, 32, "relu", init="he_normal")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    cb = GradwatchCallback(every=4, verbose=False)
    model.fit(x, y, batch_size=32, epochs=8, verbose=0, callbacks=[cb])
    assert above_info(cb.diagnosis) == [], str(cb.diagnosis)
    _, dead = cb.recorder.timeline.metric("act_dead_frac")
    assert np.nanmax(dead) < 0.5
    assert model.evaluate(x, y, verbose=0) < 0.2  # it did learn


def test_too_high_a_rate_is_diagnosed_with_gradients_blowing_up_from_the_step_size() -> None:
    x, y = circles()
    model = mlp(4, 32, "relu", init="he_normal")
    model.compile(optimizer=keras.optimizers.SGD(5.0), loss="binary_crossentropy")
    cb = GradwatchCallback(every=1, verbose=False)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb])
    d = cb.diagnosis
    blown = [f for f in above_info(d) if f.kind in (gw.Kind.EXPLODING_GRADIENT, gw.Kind.NONFINITE_GRADIENT)]
    assert blown and blown[0].severity == gw.Severity.ERROR, str(d)
    assert d.causes[0].kind == "step_size_too_large" and "step_size_too_large" in blown[0].causes


# -- structure ----------------------------------------------------------------------------------
def test_functional_structure_skips_norms_and_weight_scales_as_the_torch_path_reads_them() -> None:
    fresh()
    inp = keras.Input((8,))
    h = keras.layers.Dense(8, activation="relu", name="a")(inp)
    r = keras.layers.Dense(8, name="b")(h)
    r = keras.layers.BatchNormalization(name="bn")(r)
    r = keras.layers.LeakyReLU(negative_slope=0.1, name="act")(r)
    s = keras.layers.Add(name="sum")([h, r])
    out = keras.layers.Dense(1, name="head")(s)
    model = keras.Model(inp, out)
    anatomy, variables = build_anatomy(model)
    s = analyse(model, anatomy)
    assert anatomy.names == ["a", "b", "bn", "head"] and anatomy["bn"].type == "BatchNormalization"
    assert [v.path for v in variables["a"]] == ["a/kernel", "a/bias"]
    assert s.method == "trace" and s.skip_connections == 1
    assert anatomy["b"].extra["skip"] is True and anatomy["a"].extra["skip"] is False
    assert anatomy["a"].extra["activation"] == "relu"
    assert anatomy["b"].extra["activation"] == "leaky_relu(negative_slope=0.1)"
    assert anatomy["b"].extra["norm"] == "BatchNormalization"
    assert s.normalizations == ["bn"]
    w = model.get_layer("b").kernel.numpy().astype(np.float64)
    assert anatomy["b"].extra["sigma_w2"] == pytest.approx(8 * np.mean(w**2))
    assert anatomy["a"].fan_in == 8 and anatomy["head"].fan_out == 1


def test_recurrent_layers_carry_their_cell_facts() -> None:
    fresh()
    model = keras.Sequential([
        keras.Input((100, 2)),
        keras.layers.SimpleRNN(16, return_sequences=True, name="rnn"),
        keras.layers.LSTM(8, name="lstm"),
        keras.layers.Dense(1),
    ])  # fmt: skip
    anatomy, _ = build_anatomy(model)
    s = analyse(model, anatomy)
    rnn, lstm = anatomy["rnn"].extra, anatomy["lstm"].extra
    assert s.recurrent == {"rnn": 100, "lstm": 100}
    assert rnn["cell"] == "rnn" and rnn["activation"] == "tanh"
    r = model.get_layer("rnn").cell.recurrent_kernel.numpy().astype(np.float64)
    assert rnn["hh_radius"] == pytest.approx(np.abs(np.linalg.eigvals(r)).max())
    assert rnn["hh_norm"] == pytest.approx(np.linalg.svd(r, compute_uv=False)[0])
    assert lstm["cell"] == "lstm" and lstm["keep_bias_max"] == pytest.approx(1.0)  # unit_forget_bias


# -- bad input ----------------------------------------------------------------------------------
def test_bad_arguments_are_refused_with_the_reason() -> None:
    with pytest.raises(gw.GradwatchValueError, match="every must be at least 1, got 0"):
        GradwatchCallback(every=0)
    cb = GradwatchCallback()
    cb.set_model(mlp(1, 4, "relu"))  # never compiled
    with pytest.raises(gw.GradwatchValueError, match=r"needs a compiled model \(model.compile\(optimizer=...\)\)"):
        cb.on_train_begin()
    weightless = keras.Sequential([keras.Input((3,)), keras.layers.Activation("relu")], name="bare")
    with pytest.raises(gw.GradwatchValueError, match="the Keras model 'bare' has no weights, so there are no gradients to watch"):
        build_anatomy(weightless)


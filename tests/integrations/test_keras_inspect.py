"""`gw.inspect` on real Keras 3 models (TensorFlow backend, CPU, small models)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "tensorflow"  # set explicitly: the tests are of the TF backend
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

tf = pytest.importorskip("tensorflow", reason="the keras extra (tensorflow-cpu) is not installed")
keras = pytest.importorskip("keras", reason="the keras extra (keras) is not installed")

import gradwatch as gw  # noqa: E402


def fresh() -> None:
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)


def mlp(depth: int, activation: str, init: str = "glorot_uniform", width: int = 32) -> keras.Model:
    fresh()
    hidden = [keras.layers.Dense(width, activation=activation, kernel_initializer=init) for _ in range(depth)]
    return keras.Sequential([keras.Input((16,)), *hidden, keras.layers.Dense(4)])


def batch(n: int = 64, features: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, features)).astype("float32")


def tape_norms(model: keras.Model, x: object) -> dict[str, float]:
    """Per-layer gradient norm of sum(y^2)/2 by a plain GradientTape, in float64."""
    with tf.GradientTape() as tape:
        loss = 0.5 * tf.reduce_sum(tf.square(model(x, training=True)))
    out = {}
    variables = [v for layer in model.layers for v in layer.trainable_weights]
    grads = tape.gradient(loss, variables)
    at = 0
    for layer in model.layers:
        k = len(layer.trainable_weights)
        if k:
            gs = grads[at : at + k]
            out[layer.name] = math.sqrt(sum(float(np.sum(tf.convert_to_tensor(g).numpy().astype(np.float64) ** 2)) for g in gs))
            at += k
    return out


def above_info(d: gw.Diagnosis) -> list[gw.Finding]:
    return [f for f in d.findings if f.severity > gw.Severity.INFO]


def test_deep_sigmoid_vanishes_and_theory_predicts_every_layer() -> None:
    model, x = mlp(16, "sigmoid"), batch()
    before = [v.numpy().copy() for v in model.variables]
    d = gw.inspect(model, x)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.variables, strict=True))
    expected = tape_norms(model, x)
    by = {r.name: r for r in d.layers}
    assert list(by) == [f"dense_{i}" if i else "dense" for i in range(17)]
    for name, norm in expected.items():
        assert by[name].measured_grad_norm == pytest.approx(norm, rel=1e-5), name
        assert by[name].extra["activation"] == ("sigmoid" if name != "dense_16" else None)
        assert by[name].extra["sigma_w2"] > 0
    # theory from the chain's input and the output gradient alone: within 0.3 decades (as for torch)
    assert by["dense_16"].predicted_grad_norm == pytest.approx(by["dense_16"].measured_grad_norm)
    for r in d.layers:
        assert r.predicted_grad_norm is not None and r.measured_grad_norm is not None
        assert abs(math.log10(r.predicted_grad_norm / r.measured_grad_norm)) < 0.3, r.name
    (f,) = d.findings
    assert f.kind == gw.Kind.VANISHING_GRADIENT and f.severity == gw.Severity.WARNING
    assert f.evidence["ratio"] == pytest.approx(expected["dense"] / expected["dense_16"], rel=1e-4)
    assert abs(math.log10(f.evidence["predicted_ratio"] / f.evidence["ratio"])) < 1
    assert f.causes[0] == "saturating_activations" == str(d.causes[0].kind)
    assert "structure read by sequential" in d.notes


def test_an_output_activation_is_applied_and_the_layers_are_left_unwrapped() -> None:
    fresh()
    hidden = [keras.layers.Dense(32, activation="tanh") for _ in range(5)]
    model = keras.Sequential([keras.Input((16,)), *hidden, keras.layers.Dense(8, activation="sigmoid")])
    x = batch()
    d = gw.inspect(model, x)
    by = {r.name: r for r in d.layers}
    for name, norm in tape_norms(model, x).items():  # a wrong output (activation lost) would change them all
        assert by[name].measured_grad_norm == pytest.approx(norm, rel=1e-5), name
    for r in d.layers:
        assert r.predicted_grad_norm is not None and r.measured_grad_norm is not None
        assert abs(math.log10(r.predicted_grad_norm / r.measured_grad_norm)) < 0.3, r.name
    assert all("call" not in vars(layer) for layer in model.layers)
    assert model.layers[-1].activation is keras.activations.sigmoid


def test_healthy_relu_he_net_draws_nothing() -> None:
    d = gw.inspect(mlp(8, "relu", init="he_normal"), batch())
    assert not above_info(d) and d.healthy
    assert d.causes == []
    assert all(r.predicted_grad_norm is not None for r in d.layers)


def test_functional_model_with_a_skip_and_batchnorm() -> None:
    fresh()
    inp = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="stem")(inp)
    b = keras.layers.Dense(16, activation="relu", name="inner")(h)
    b = keras.layers.Dense(16, name="back")(b)
    h = keras.layers.Add(name="add")([h, b])
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(h))
    x = batch(32, 8) * 3.0 + 1.0
    moving = [v.numpy().copy() for v in model.get_layer("bn").non_trainable_weights]
    d = gw.inspect(model, (x,))
    # a training-mode pass moves BatchNorm's statistics: inspect puts them back
    assert all(np.array_equal(m, v.numpy()) for m, v in zip(moving, model.get_layer("bn").non_trainable_weights, strict=True))
    by = {r.name: r for r in d.layers}
    assert by["inner"].extra["skip"] and by["back"].extra["skip"] and not by["head"].extra["skip"]
    assert all(r.predicted_grad_norm is None for r in d.layers)
    assert any(n.startswith("no theory prediction per layer") for n in d.notes)
    expected = tape_norms(model, x)
    for name, norm in expected.items():
        assert by[name].measured_grad_norm == pytest.approx(norm, rel=1e-5), name


def test_recurrent_layers_and_an_embedding_on_integer_input() -> None:
    fresh()
    model = keras.Sequential(
        [keras.Input((12,), dtype="int32"), keras.layers.Embedding(20, 8), keras.layers.LSTM(8), keras.layers.Dense(1)]
    )
    x = np.random.default_rng(0).integers(0, 20, (6, 12)).astype("int32")
    d = gw.inspect(model, x)
    by = {r.name: r for r in d.layers}
    assert by["lstm"].extra["recurrent"] and by["lstm"].extra["seq_len"] == 12
    for name, norm in tape_norms(model, x).items():  # the embedding's gradient comes as IndexedSlices
        assert by[name].measured_grad_norm == pytest.approx(norm, rel=1e-5), name
    assert any("not a Dense layer" in n for n in d.notes)


def test_bad_arguments_say_what_to_do() -> None:
    model = mlp(2, "relu")
    with pytest.raises(gw.ModelError, match=r"failed on the example input \(\(5, 3\) float32\)") as e:
        gw.inspect(model, batch(5, 3))
    assert e.value.__cause__ is not None
    with pytest.raises(TypeError, match="example_input for a Keras model must be an array or tensor"):
        gw.inspect(model, "x")
    with pytest.raises(TypeError, match=r"expects a torch.nn.Module or a keras.Model, got keras\..*Dense"):
        gw.inspect(model.layers[0], batch())
    with pytest.raises(ValueError, match=r"scalar .*got \(4, 4\)"):
        gw.inspect(model, batch(4), loss_fn=lambda y: y)
    for layer in model.layers:
        layer.trainable = False
    with pytest.raises(ValueError, match="frozen"):
        gw.inspect(model, batch())

from __future__ import annotations

import subprocess
import sys

from gradwatch.cli import main


def test_demo_measures_explains_and_fixes(tmp_path, capsys) -> None:
    page = tmp_path / "demo.html"
    assert main(["demo", "--steps", "100", "--depth", "12", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "sigmoid, default init" in out and "relu, He init" in out
    assert out.count("test accuracy") == 3  # sigmoid, relu, and the repaired sigmoid net
    assert "of the last layer's gradient" in out
    assert "vanishing_gradient" in out and "saturating_activations" in out
    assert "Sigmoid -> ReLU" in out
    assert f"HTML report of the sigmoid run (figures, findings, the fix): {page}" in out
    assert "vanishing_gradient" in page.read_text() and page.read_text().count("<img ") >= 4


def test_python_dash_m_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "gradwatch", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert main([]) == 2
    assert "usage: gradwatch" in capsys.readouterr().out


def test_inspect_a_factory(tmp_path, capsys) -> None:
    f = tmp_path / "net.py"
    f.write_text(
        "import torch\n"
        "from gradwatch.lab.models import mlp\n"
        "def make():\n"
        "    return mlp(8, 3, depth=20, width=32, activation='relu', seed=0), torch.randn(16, 8)\n"
        "def only_model():\n"
        "    return mlp(8, 3, depth=2, width=32, activation='relu', init='he', seed=0)\n"
    )
    assert main(["inspect", f"{f}:make"]) == 0
    out = capsys.readouterr().out
    assert "init_mismatch" in out and "kaiming_normal_" in out and "predicted" in out
    assert main(["inspect", f"{f}:only_model"]) == 0
    assert "guessed from the first layer: shape (8, 8)" in capsys.readouterr().out
    assert main(["inspect", f"{f}:nope"]) == 2
    assert "no callable 'nope'" in capsys.readouterr().err


def test_help_lists_every_verb_and_the_exit_codes(capsys) -> None:
    from gradwatch.cli import build_parser

    text = build_parser().format_help()
    for verb in ("demo", "inspect", "report", "explain", "quiz", "lab"):
        assert f"\n    {verb} " in text
    assert "exit codes:" in text and "2  bad usage" in text


def test_a_bad_argument_is_one_line_and_exit_2() -> None:
    r = subprocess.run([sys.executable, "-m", "gradwatch", "quiz", "--cards", "x"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "gradwatch quiz: argument --cards: invalid int value: 'x' (see gradwatch quiz --help)\n"
    r = subprocess.run([sys.executable, "-m", "gradwatch", "nosuchverb"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "invalid choice: 'nosuchverb'" in r.stderr

from __future__ import annotations

import subprocess
import sys

from gradwatch.cli import main


def test_demo_shows_the_gradient_gap_and_both_accuracies(capsys) -> None:
    assert main(["demo", "--steps", "60", "--depth", "12"]) == 0
    out = capsys.readouterr().out
    assert "sigmoid, default init" in out and "relu, He init" in out
    assert out.count("test accuracy") == 2
    assert "of the last layer's gradient" in out


def test_python_dash_m_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "gradwatch", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert main([]) == 2
    assert "usage: gradwatch" in capsys.readouterr().out

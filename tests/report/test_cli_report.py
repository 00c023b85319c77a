"""`gradwatch report`, `gradwatch inspect --html`: the CLI over `gw.report`."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("matplotlib")

import gradwatch as gw
from gradwatch.cli import main

_TRAIN_UNTIL_KILLED = textwrap.dedent(
    """
    import sys, time, torch, gradwatch as gw
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[m for _ in range(6) for m in (torch.nn.LazyLinear(16), torch.nn.Tanh())], torch.nn.Linear(16, 3))
    model(torch.randn(2, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gw.watch(model, every=2, log=sys.argv[1])
    step = 0
    while True:
        x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); w.step(loss=loss); opt.step()
        step += 1
        if step == 30:
            print("ready", flush=True)
        if step > 30:
            time.sleep(0.01)
    """
)


def test_report_on_the_log_of_a_killed_process(tmp_path, capsys) -> None:
    log = tmp_path / "run.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_UNTIL_KILLED, str(log)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(gw.load(log)) >= 15  # every 2nd of at least 30 steps
    html = tmp_path / "out" / "report.html"
    assert main(["report", str(log), "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert f"HTML report: {html}" in out
    assert html.is_file() and html.read_text().count("<img ") >= 4
    assert "steps looked at" in out  # the terminal report came first


def test_report_explains_a_missing_or_malformed_log(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 2
    assert f"gradwatch report: no such file: {tmp_path / 'nope.jsonl'}" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n{}\n")
    assert main(["report", str(bad)]) == 2
    assert "gradwatch report:" in capsys.readouterr().err


def test_inspect_writes_an_html_report_with_the_jacobian_spectrum(tmp_path, capsys) -> None:
    f = tmp_path / "net.py"
    f.write_text(
        "import torch\n"
        "from gradwatch.lab.models import mlp\n"
        "def make():\n"
        "    return mlp(8, 3, depth=8, width=16, activation='sigmoid', seed=0), torch.randn(16, 8)\n"
    )
    out_html = tmp_path / "inspect.html"
    assert main(["inspect", f"{f}:make", "--html", str(out_html)]) == 0
    assert f"HTML report: {out_html}" in capsys.readouterr().out
    page = out_html.read_text()
    assert 'id="fig-gradient_flow"' in page and 'id="fig-jacobian"' in page
    assert "saturating_activations" in page


def test_the_demo_states_what_was_measured_not_a_fixed_story() -> None:
    from gradwatch.lab.demo import Trained, _what_happened

    def trained(acc: float, first: float) -> Trained:
        return Trained("x", [first, 1.0], ["0", "1"], acc, 0.0, None, None)  # type: ignore[arg-type]

    text = _what_happened(trained(0.114, 3e-9), trained(0.93, 0.5), classes=10)
    assert text == (
        "\nMeasured:\n"
        "- x: the first layer gets 3e-09 of the last layer's gradient;\n"
        "  the network stays near chance: 11.4% right on the test set (chance 10%, 10 classes).\n"
        "- x: the first layer gets 5e-01 of the last layer's gradient;\n"
        "  the network learns: 93.0% right on the test set (chance 10%)."
    )
    # a sigmoid net that did learn is not said to stay at chance
    assert "learns: 64.0% right" in _what_happened(trained(0.64, 1e-3), trained(0.9, 1.0), classes=10)

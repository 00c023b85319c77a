from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import gradwatch as gw
from gradwatch.record import JsonlLog, read_log
from gradwatch.record import log as log_module
from gradwatch.record.log import LOG_FORMAT, LOG_VERSION


@pytest.fixture(autouse=True, params=["orjson", "json"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here reads logs both ways: through orjson (installed with the `report`
    extra) and through the json module alone, as without it."""
    if request.param == "json":
        monkeypatch.setattr(log_module, "_orjson", None)
    else:
        assert log_module._orjson is not None, "orjson is part of the report extra that make test installs"
    return str(request.param)


HEADER = {"type": "header", "format": LOG_FORMAT, "version": LOG_VERSION, "columns": ["a"], "anatomy": {"layers": []}}


def write(path: Path, *records: dict) -> None:
    log = JsonlLog(path)
    for r in records:
        log.write(r)
    log.close()


def test_round_trip_keeps_nonfinite_numbers_as_strict_json(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    rec = {"type": "record", "step": 0, "layers": {"grad_norm": [math.nan]}, "losses": [[0, math.inf]], "values": {"m": {"x": -math.inf}}}
    write(p, HEADER, rec)
    for line in p.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    header, records = read_log(p)
    assert header["columns"] == ["a"]
    assert math.isnan(records[0]["layers"]["grad_norm"][0])
    assert records[0]["losses"][0][1] == math.inf
    assert records[0]["values"]["m"]["x"] == -math.inf


def test_nonfinite_strings_are_read_as_floats_in_every_value_position_and_only_there(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    rec = {
        "type": "record", "step": 0,
        "values": {"nan": {"inf": math.inf, "-inf": -math.nan}, "m": {"x": math.nan}},  # keys named like them
        "profiles": {"p": [math.inf, 1.0, -math.inf, math.nan]},
        "note": 'a "nan", within text, \\"inf\\"',
    }
    write(p, HEADER, rec)
    # a log written by hand with spaces (json.dumps' default separators) reads the same
    spaced = tmp_path / "spaced.jsonl"
    spaced.write_text(json.dumps(HEADER) + "\n" + json.dumps({"type": "record", "step": 0, "a": [ "inf" , "nan" ], "b": {"k": "-inf"}}) + "\n")
    for path in (p, spaced):
        _, records = read_log(path)
        r = records[0]
        if path == p:
            assert list(r["values"]) == ["nan", "m"] and list(r["values"]["nan"]) == ["inf", "-inf"]
            assert r["values"]["nan"]["inf"] == math.inf and math.isnan(r["values"]["nan"]["-inf"])
            got = r["profiles"]["p"]
            assert got[0] == math.inf and got[1] == 1.0 and got[2] == -math.inf and math.isnan(got[3])
            assert r["note"] == rec["note"]  # text that mentions them stays text
        else:
            assert r["a"][0] == math.inf and math.isnan(r["a"][1]) and r["b"]["k"] == -math.inf


def test_a_cut_short_last_line_is_dropped(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    write(p, HEADER, {"type": "record", "step": 0, "layers": {}}, {"type": "record", "step": 1, "layers": {}})
    text = p.read_text()
    p.write_text(text[: len(text) - 9])  # the killed process got half way through its last line
    _, records = read_log(p)
    assert [r["step"] for r in records] == [0]


def test_damage_elsewhere_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    write(p, HEADER, {"type": "record", "step": 0, "layers": {}})
    lines = p.read_text().splitlines(keepends=True)
    p.write_text(lines[0] + "{oops\n" + lines[1])
    with pytest.raises(ValueError, match=r"run\.jsonl:2: not valid JSON"):
        read_log(p)


def test_a_complete_but_invalid_last_line_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    write(p, HEADER)
    with open(p, "a") as f:
        f.write("not json\n")
    with pytest.raises(ValueError, match=r":2: not valid JSON"):
        read_log(p)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("", "no header line"),
        ('{"type": "record", "step": 0}\n', "first line is not a gradwatch log header"),
        ('[1, 2]\n', "expected a JSON object"),
        (json.dumps({**HEADER, "version": 99}) + "\n", "newer than this gradwatch reads"),
        (json.dumps(HEADER) + '\n{"type": "wat"}\n', "unknown record type 'wat'"),
        (json.dumps(HEADER) + '\n{"type": "record", "step": "x"}\n', "needs an integer 'step'"),
    ],
)
def test_malformed_logs(tmp_path: Path, lines: str, message: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(lines)
    with pytest.raises(ValueError, match=message):
        gw.load(p)


def test_a_missing_log_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        gw.load(tmp_path / "nowhere.jsonl")


def test_the_log_folder_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        JsonlLog(tmp_path / "no" / "such" / "run.jsonl")


def test_a_folder_is_not_a_log_file(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory"):
        JsonlLog(tmp_path)


def test_both_parsers_read_every_number_back_exactly(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    values = [rng.uniform(-1, 1) * 10 ** rng.randint(-300, 300) for _ in range(2000)] + [0.0, -0.0, 5e-324, 1.7976931348623157e308]
    write(tmp_path / "r.jsonl", HEADER, *({"type": "record", "step": i, "layers": {"g": [v]}} for i, v in enumerate(values)))
    _, records = read_log(tmp_path / "r.jsonl")
    assert [r["layers"]["g"][0] for r in records] == values
    assert all(math.copysign(1, r["layers"]["g"][0]) == math.copysign(1, v) for r, v in zip(records, values, strict=True))

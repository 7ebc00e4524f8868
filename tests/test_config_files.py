"""Config files that are not a usable study: empty, not UTF-8 text, or a baseline that is not
one of the conditions. Each is one line naming the file (and the key), exit 2, nothing written."""

from __future__ import annotations

import pytest

from plasticity_lab.cli import main, train_main


def refused(code: int, capsys, cfg, out, needle: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and str(cfg) in err and needle in err, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_config_is_an_error_not_a_default_study(text, write_config, tmp_path, capsys):
    cfg = write_config(text=text)
    out = tmp_path / "out"
    refused(train_main(["-n", "x", "-p", str(cfg), "-o", str(out)]), capsys, cfg, out, "empty config")


def test_a_config_that_is_not_utf8_text(write_config, tmp_path, capsys):
    cfg = write_config()
    cfg.write_bytes(cfg.read_bytes().replace(b"h_size", b"h_\xff\xfesize", 1))
    out = tmp_path / "out"
    refused(train_main(["-n", "x", "-p", str(cfg), "-o", str(out)]), capsys, cfg, out, "not UTF-8")
    refused(main(["sweep", str(cfg), "-o", str(out)]), capsys, cfg, out, "not UTF-8")


def test_a_baseline_that_is_not_a_condition(write_config, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = write_config({"experiment": {"baseline": "basline"}})
    err = refused(train_main(["-n", "x", "-p", str(cfg), "-o", str(out)]), capsys, cfg, out, "experiment.baseline")
    assert "'basline'" in err and "allowed: baseline" in err
    refused(main(["sweep", str(cfg), "-o", str(out), "--seeds", "1"]), capsys, cfg, out, "experiment.baseline")


def test_the_default_baseline_must_exist_too(write_config, tmp_path, capsys):
    cfg = write_config(text="experiment:\n  conditions:\n    relu: {}\n    mish: {model.activation: mish}\n")
    out = tmp_path / "out"
    err = refused(train_main(["-n", "x", "-p", str(cfg), "-o", str(out)]), capsys, cfg, out, "experiment.baseline")
    assert "(the default)" in err and "allowed: relu, mish" in err


def test_a_named_baseline_among_the_conditions_is_accepted(write_config):
    from plasticity_lab.config import load_study

    cfg = write_config({"experiment": {"baseline": "mish", "conditions": {"mish": {"model.activation": "mish"}}}})
    assert load_study(cfg).base.experiment.baseline == "mish"

"""Optional W&B logging: an offline run (no network) holds the run's metrics, probes and resolved
config under the right names; without the package the flag is a one-line error."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from plasticity_lab.cli import train_main


def wandb_records(path: Path):
    """The records of a W&B transaction log (``run-<id>.wandb``): a 7-byte file header, then
    LevelDB-log-style chunks (4-byte checksum, 2-byte length, 1-byte type) in 32 KiB blocks;
    type 1 is a whole record, 2/3/4 its first/middle/last pieces."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_offline_run_holds_metrics_probes_and_config(write_config, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    wandb_dir = tmp_path / "wandb_home"
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        (wandb_dir / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(wandb_dir / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = write_config({"ppo_trainer": {"num_epochs": 3, "shift_points": [2], "test_interval": 1}})
    assert train_main(["-n", "study", "-p", str(cfg), "-o", str(tmp_path / "out"), "--wandb",
                       "--set", "logging.wandb.mode=offline", "ppo_trainer.lr=1e-3"]) == 0
    run = tmp_path / "out/results/study/baseline/seed_0"
    run_id = (run / "wandb_id").read_text().strip()
    [offline] = (wandb_dir / "wandb").glob(f"offline-run-*-{run_id}")
    records = list(wandb_records(offline / f"run-{run_id}.wandb"))
    [info] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (info.run_id, info.project, info.run_group, info.display_name) == (run_id, "study", "baseline", "baseline/seed_0")
    config = {item.key: json.loads(item.value_json) for item in info.config.update}
    assert config["ppo_trainer"]["lr"] == 0.001 and config["run"] == {"study": "study", "condition": "baseline", "seed": 0}
    assert config["experiment"]["overrides"] == ["logging.wandb.mode=offline", "ppo_trainer.lr=1e-3", "logging.wandb.enabled=true"]
    history: dict[int, dict[str, float]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            history[items["_step"]] = items
    metrics = read_rows(run / "metrics.csv")
    assert sorted(history) == [0, 1, 2]
    for row in metrics:
        logged = history[int(row["epoch"])]
        for key in ("test_r", "p_loss", "entropy", "env_steps", "dead_units"):
            assert logged[key] == pytest.approx(float(row[key]), rel=1e-5), key
    probes = read_rows(run / "diagnostics.csv")
    assert [int(p["epoch"]) for p in probes] == [0, 1, 2]
    for probe in probes:
        logged = history[int(probe["epoch"])]
        assert logged["dense/effective_rank"] == pytest.approx(float(probe["dense/effective_rank"]), rel=1e-5)
        assert logged["probe_seconds"] == pytest.approx(float(probe["probe_seconds"]), rel=1e-5)
    assert not (run / "wandb").exists()  # WANDB_DIR wins over the run directory


def test_missing_package_is_a_one_line_error_naming_the_extra(write_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    code = train_main(["-n", "x", "-p", str(write_config()), "-o", str(tmp_path / "out"), "--wandb"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--set logging.wandb.enabled: the wandb package is not installed (pip install -e '.[wandb]')" in err
    assert not (tmp_path / "out").exists()

import subprocess
import sys

import pytest

from geogfm.cli import STAGES, main


def test_check_prints_the_resolved_config(capsys, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  bands: [red, green, blue]\n")
    assert main(["check", "--params", str(params)]) == 0
    assert '"in_chans": 3' in capsys.readouterr().out


@pytest.mark.parametrize("stage", list(STAGES))
def test_bad_params_stop_every_stage_before_any_work(stage, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  optimizer:\n    lr: -0.1\n")
    out = tmp_path / "out"
    assert main([stage, "--params", str(params), "--out", str(out)]) == 2
    assert "train.optimizer.lr = -0.1" in capsys.readouterr().err
    assert not out.exists()


def test_python_dash_m_runs_the_same_cli(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  depth: 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "geogfm", "check", "--params", str(params)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "model.depth = 0" in proc.stderr

"""`vggfeat train` refuses user mistakes with one clear line before any work starts (issue 12)."""
from __future__ import annotations

from click.testing import CliRunner

from vggfeat.cli.main import cli
from vggfeat.errors import VggfeatError
from vggfeat.train.loop import RunExistsError, check_run_folder


def test_train_refuses_a_folder_holding_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt-e002-s00000010.pt").write_bytes(b"precious")
    res = CliRunner().invoke(cli, ["train", "smoke", "--out", str(run), "--data-root", str(tmp_path / "d")])
    assert res.exit_code == 1, res.output
    assert f"{run} already holds a run (epoch 2 of 20); pass --resume to continue it or --overwrite" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "d").exists()  # refused before any work
    assert (run / "ckpt-e002-s00000010.pt").read_bytes() == b"precious"
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "model.safetensors").write_bytes(b"x")  # a finished run
    res = CliRunner().invoke(cli, ["train", "smoke", "--out", str(run2), "--set", "optim.epochs=5"])
    assert res.exit_code == 1 and "already holds a run (epoch 5 of 5)" in res.output, res.output
    assert "--overwrite" in CliRunner().invoke(cli, ["train", "--help"]).output


def test_overwrite_clears_only_the_run_files(tmp_path):
    (tmp_path / "ckpt-e001-s00000004.pt").write_bytes(b"a")
    for name in ("model.safetensors", "metrics.jsonl", "best.pt", "last.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    try:
        check_run_folder(tmp_path, 3, resume=False, overwrite=False)
        raise AssertionError("not refused")
    except RunExistsError as e:
        assert isinstance(e, VggfeatError) and "(epoch 1 of 3)" in str(e)
    check_run_folder(tmp_path, 3, resume=True, overwrite=False)  # --resume continues it
    check_run_folder(tmp_path, 3, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    check_run_folder(tmp_path, 3, resume=False, overwrite=False)  # now an empty run folder: fine

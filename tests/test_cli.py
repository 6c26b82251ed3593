"""The `yolov1` command (every subcommand's --help, unknown commands, the installed script) and the preflight."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipelines import cli, preflight
from tests.server_process import free_port


def _help_paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: yolov1")
    flat = " ".join(out.split())  # argparse wraps long help lines
    for name, (_, help_text) in cli.COMMANDS.items():
        assert f"{name} {help_text}" in flat, name
    assert cli.main([]) == 0  # no command: the same help
    assert "usage: yolov1" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    paragraphs = _help_paragraphs(capsys.readouterr().out)
    assert paragraphs[0].startswith("usage:")
    # The paragraph after the usage is a description, not straight into the argument lists.
    assert len(paragraphs) >= 3 and not paragraphs[1].startswith(("options:", "positional arguments:")), paragraphs
    assert any(p.startswith("options:") for p in paragraphs)


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["trian"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train" in err


def test_installed_console_script():
    script = Path(sys.executable).parent / "yolov1"
    assert script.is_file(), f"{script}: console script not installed (pip install -e .)"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(name in out.stdout for name in cli.COMMANDS)
    sub = subprocess.run([str(script), "predict", "--help"], capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0 and "usage: yolov1 predict" in sub.stdout, sub.stderr


# -- preflight -------------------------------------------------------------------------------------------------


def _params_file(tmp_path: Path, repo_params_dict: dict, archive: dict) -> Path:
    raw = copy.deepcopy(repo_params_dict)
    raw["data"]["root"] = str(tmp_path / "data")
    raw["data"]["archives"] = [{"name": "voc2007-test", "filename": "VOCtest_06-Nov-2007.tar", "md5": "0" * 32,
                                "size": None, "local": None, "mirrors": [], **archive}]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_preflight_passes_with_a_local_archive(tmp_path: Path, repo_params_dict, capsys):
    tarball = tmp_path / "have.tar"
    tarball.write_bytes(b"x")
    dead = f"http://127.0.0.1:{free_port()}/VOCtest_06-Nov-2007.tar"  # never asked: local comes first
    params = _params_file(tmp_path, repo_params_dict, {"local": str(tarball), "mirrors": [dead]})
    assert preflight.main(["--params", str(params), "--allow-cpu"]) == 0
    assert "every archive is available" in capsys.readouterr().out


def test_preflight_passes_with_the_tarball_in_raw(tmp_path: Path, repo_params_dict):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "VOCtest_06-Nov-2007.tar").write_bytes(b"x")
    params = _params_file(tmp_path, repo_params_dict, {})
    assert preflight.main(["--params", str(params), "--allow-cpu"]) == 0


def test_preflight_passes_with_a_live_mirror(tmp_path: Path, repo_params_dict):
    from pipelines.demo import serve_folder

    served = tmp_path / "served"
    served.mkdir()
    (served / "VOCtest_06-Nov-2007.tar").write_bytes(b"x")
    with serve_folder(served, 0) as port:
        dead = f"http://127.0.0.1:{free_port()}/VOCtest_06-Nov-2007.tar"
        live = f"http://127.0.0.1:{port}/VOCtest_06-Nov-2007.tar"  # the dead one first: it falls through
        params = _params_file(tmp_path, repo_params_dict, {"mirrors": [dead, live]})
        assert preflight.main(["--params", str(params), "--allow-cpu", "--timeout", "5"]) == 0


def test_preflight_dead_mirror_says_what_to_do(tmp_path: Path, repo_params_dict, capsys):
    url = f"http://127.0.0.1:{free_port()}/VOCtest_06-Nov-2007.tar"
    params = _params_file(tmp_path, repo_params_dict, {"local": str(tmp_path / "missing.tar"), "mirrors": [url]})
    assert preflight.main(["--params", str(params), "--allow-cpu", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert url in err
    assert f"local {tmp_path / 'missing.tar'}: no such file" in err
    assert "data.archives[0].local" in err and str(tmp_path / "data" / "raw" / "VOCtest_06-Nov-2007.tar") in err
    assert "make demo" in err


def test_preflight_malformed_mirror_is_reported(tmp_path: Path, repo_params_dict, capsys):
    # No scheme: read as a plain path (preflight accepts local mirrors), which does not exist.
    params = _params_file(tmp_path, repo_params_dict, {"mirrors": ["host.robots.ox.ac.uk/VOCtest.tar"]})
    assert preflight.main(["--params", str(params), "--allow-cpu"]) == 2  # a message, not a traceback
    err = capsys.readouterr().err
    assert "host.robots.ox.ac.uk/VOCtest.tar: file not found" in err and "make demo" in err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_preflight_without_gpu_needs_allow_cpu(tmp_path: Path, repo_params_dict, capsys):
    tarball = tmp_path / "have.tar"
    tarball.write_bytes(b"x")
    params = _params_file(tmp_path, repo_params_dict, {"local": str(tarball)})
    assert preflight.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--allow-cpu" in err and "make demo" in err


def test_preflight_bad_params_file(tmp_path: Path, capsys):
    assert preflight.main(["--params", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


# -- version, export, and errors that must not escape as tracebacks ------------------------------------------------


def test_version(capsys):
    from importlib.metadata import version

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"yolov1 {version('yolov1')}"
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["-V"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"yolov1 {version('yolov1')}"


@pytest.mark.parametrize("error", ["checkpoint", "tracking"])
def test_checkpoint_and_tracking_errors_are_one_line(error, capsys):
    from pipelines.tracking import TrackingUnavailable
    from yolov1.checkpoint import CheckpointError

    def command(argv):
        if error == "checkpoint":
            raise CheckpointError("models/yolov1.pt: model_config.grid_size: expected int, got '7'")
        raise TrackingUnavailable("http://alice:S3cr3t@mlflow.internal:5000 does not answer\nmore detail")

    assert cli.run_main(command, [], prog="yolov1 evaluate") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("yolov1 evaluate: error: ")
    assert "Traceback" not in err and "S3cr3t" not in err


def test_bugs_keep_their_traceback():
    def command(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli.run_main(command, [])

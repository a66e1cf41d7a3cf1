from __future__ import annotations

import subprocess
import sys

import pytest

from steelseg.cli import build_parser, main


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_help_everywhere(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    for name in subcommands():
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "usage: steelseg " + name in out


def test_info_and_folds(synth_full, tmp_path, capsys) -> None:
    assert main(["info", str(synth_full)]) == 0
    out = capsys.readouterr().out
    assert "images      24" in out and "scratches" in out
    assert main(["folds", str(synth_full), "--k", "3", "--out", str(tmp_path / "f.csv")]) == 0
    assert (tmp_path / "f.csv").is_file()


def test_synth_command(tmp_path, capsys) -> None:
    assert main(["synth", str(tmp_path / "s"), "--images", "3", "--height", "32", "--width", "64"]) == 0
    assert len(list((tmp_path / "s" / "train_images").iterdir())) == 3


def test_clean_errors_no_traceback(tmp_path) -> None:
    (tmp_path / "train_images").mkdir()
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nx.jpg,1,1 2\n")
    proc = subprocess.run([sys.executable, "-m", "steelseg.cli", "info", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "train.csv:2" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "steelseg.cli", "info", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_convert_command(tmp_path, capsys) -> None:
    import numpy as np

    from steelseg.data.open import open_dataset

    from .conftest import write_voc

    a = np.zeros((16, 24), np.uint8)
    a[3:6, 4:10] = 2
    src = write_voc(tmp_path / "voc", {"a": a, "b": np.zeros((16, 24), np.uint8)})
    assert main(["convert", str(src), str(tmp_path / "kag"), "--class-names", "x,y"]) == 0
    back = open_dataset(tmp_path / "kag")
    assert back.class_names == ["x", "y"] and back.table["area_2"].tolist() == [18, 0]

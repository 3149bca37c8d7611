"""The data commands end to end: synth, ingest, data info, and their bad-input contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REAL_CLIP
from varnext_ray.cli import main


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_ingest_info(tmp_path: Path, capsys) -> None:
    code, out, _ = _run(
        [
            "synth",
            str(tmp_path / "s"),
            "--clips",
            "2",
            "--frames",
            "30",
            "--size",
            "96x54",
            "--seed",
            "4",
        ],
        capsys,
    )
    assert code == 0 and "wrote 2 clips" in out
    code, out, _ = _run(
        [
            "ingest",
            str(tmp_path / "s"),
            "--out",
            str(tmp_path / "ds"),
            "--size",
            "64x36",
            "--encoding",
            "png",
        ],
        capsys,
    )
    assert code == 0 and "wrote 60 frames" in out
    code, out, _ = _run(["data", "info", str(tmp_path / "ds"), "--json"], capsys)
    info = json.loads(out)
    assert info["frames"] == 60 and info["size"] == [64, 36] and info["skipped"] == 0
    assert sum(info["splits"].values()) == 60 and info["encoding"] == "png"
    assert info["clips"] >= 2
    code, out, _ = _run(["data", "info", str(tmp_path / "ds")], capsys)
    assert code == 0 and "60 frames of 64x36" in out and out.count("\n") == 5
    code, _, err = _run(["data", "info", str(tmp_path / "ds"), "--stride", "0"], capsys)
    assert code == 2 and err.strip() == (  # the flag, not the library's parameter "stride"
        "error: --stride must be >= 1 (got 0) (--stride): pass 1 or more"
    )


def test_skipped_inputs_are_counted(tmp_path: Path, capsys, caplog) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(1, 9):
        Image.new("RGB", (32, 18), (i * 20, 0, 0)).save(frames / f"frame_{i:03d}.png")
    (frames / "frame_005.png").write_bytes(b"\x89PNG not really")
    code, _, _ = _run(
        [
            "ingest",
            str(frames),
            "--out",
            str(tmp_path / "ds"),
            "--size",
            "32x18",
            "--val",
            "0",
            "--test",
            "0",
        ],
        capsys,
    )
    assert code == 0 and "skipped" in caplog.text and "frame_005.png" in caplog.text
    _, out, _ = _run(["data", "info", str(tmp_path / "ds"), "--json"], capsys)
    info = json.loads(out)
    assert info["skipped"] == 1 and info["frames"] == 7 and info["clips"] == 2  # cut at the gap


def _ingest_argv(tmp_path: Path, frames: int) -> list[str]:
    """``ingest`` of a folder of ``frames`` 32x18 PNG frames (each a different red) into
    ``tmp_path/ds``."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(frames):
        Image.new("RGB", (32, 18), (i * 20, 0, 0)).save(folder / f"frame_{i:03d}.png")
    return ["ingest", str(folder), "--out", str(tmp_path / "ds"), "--size", "32x18"]


def test_a_held_out_share_no_frame_went_to_is_said(tmp_path: Path, capsys, caplog) -> None:
    """Eight frames cannot hold train, val and test blocks with 16 guard frames between them:
    every frame trains, and ingest says so instead of leaving it to ``train`` to find."""
    argv = _ingest_argv(tmp_path, frames=8)
    code, _, _ = _run([*argv, "--guard", "16"], capsys)
    assert code == 0
    assert "no frame went to val (--val 0.1)" in caplog.text
    assert "no frame went to test (--test 0.1)" in caplog.text
    info = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert info["splits"] == {"train": 8, "val": 0, "test": 0}
    caplog.clear()
    code, _, _ = _run(
        [*argv[:3], str(tmp_path / "ds2"), *argv[4:], "--val", "0", "--test", "0"], capsys
    )
    assert code == 0 and "no frame went to" not in caplog.text  # none was asked for


def test_with_no_guard_the_warning_does_not_ask_to_lower_it(tmp_path: Path, capsys, caplog) -> None:
    argv = _ingest_argv(tmp_path, frames=3)
    code, _, _ = _run([*argv, "--guard", "0"], capsys)
    assert code == 0 and "no frame went to val (--val 0.1)" in caplog.text
    assert "--guard" not in caplog.text and "ingest longer footage" in caplog.text


CLIP = str(REAL_CLIP)
BAD_INPUTS = {  # case: (argv, with {t} for the test's folder; the message it must produce)
    "missing path": (["ingest", "{t}/nope.mp4"], "no such file or directory"),
    "empty folder": (["ingest", "{t}/empty"], "no videos or images found"),
    "zero-byte video": (["ingest", "{t}/zero.mp4"], "cannot open as a video"),
    "text as video": (["ingest", "{t}/text.avi"], "cannot open as a video"),
    "only corrupt frames": (["ingest", "{t}/broken"], "no decodable frame"),
    "bad size": (["ingest", CLIP, "--size", "640by360"], "size must be WxH"),
    "bad every": (["ingest", CLIP, "--every", "0"], "--every must be >= 1"),
    "bad fraction": (["ingest", CLIP, "--val", "0.7"], "--val must be in"),
    "unknown flag": (["ingest", CLIP, "--sise", "1x1"], "unrecognized arguments: --sise"),
    "not a dataset": (["data", "info", "{t}/empty"], "not a frame dataset"),
    "no dataset": (["data", "info", "{t}/gone"], "dataset not found"),
    "synth odd size": (["synth", "{t}/s", "--size", "65x36"], "H.264 needs an even"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.avi").write_text("this is not a video\n" * 50)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "frame_1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    template, message = BAD_INPUTS[case]
    argv = [a.replace("{t}", str(tmp_path)) for a in template]
    if argv[0] == "ingest":
        argv += ["--out", str(tmp_path / "out")]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_user_error_survives_pickling() -> None:
    """Ray ships a trial's exception between processes by pickling it."""
    import pickle

    from varnext_ray.errors import UserError

    err = pickle.loads(pickle.dumps(UserError("bad", "here", "fix it")))
    assert (err.what, err.where, err.fix, str(err)) == (
        "bad",
        "here",
        "fix it",
        "bad (here): fix it",
    )


def test_an_out_path_that_is_not_utf8_is_refused_before_writing(tmp_path: Path, capsys) -> None:
    """A Latin-1 byte in --out (``\\xff``, a surrogate in Python's view) failed inside pyarrow
    with UnicodeEncodeError, exit 1."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 18), (i * 40, 0, 0)).save(frames / f"frame_{i:03d}.png")
    out = tmp_path / "io_out\udcff"
    code, _, err = _run(["ingest", str(frames), "--out", str(out), "--size", "32x18"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "the dataset's path is not UTF-8 text" in err and "io_out\\udcff" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]

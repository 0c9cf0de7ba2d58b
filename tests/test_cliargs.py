"""svfcheck.cliargs: the bounds are inclusive and exact, paths are checked before work, and only
user errors become exit 2 (a bug keeps its traceback)."""

from __future__ import annotations

import argparse

import pytest

from svfcheck.cliargs import (
    UsageError,
    bounded_int,
    input_file,
    int_list,
    parse_args,
    prepare_out_dir,
    prepare_out_file,
    run_guarded,
)


@pytest.mark.parametrize("text,ok", [("1", 1), ("3", 3), (" 2 ", 2), ("0", None), ("4", None), ("2.0", None),
                                     ("1e1", None), ("", None), ("two", None)])
def test_bounded_int_is_inclusive_and_whole(text, ok):
    parse = bounded_int(1, 3)
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text) if text.strip() else "whole number"):
            parse(text)
    else:
        assert parse(text) == ok


def test_int_list_parses_checks_each_item_and_rejects_repeats():
    parse = int_list(0, 9)
    assert parse("0,1, 2") == [0, 1, 2]
    for bad, needle in (("1,x", "'x'"), ("1,10", "'10'"), ("3,3", "repeats"), (",", "comma-separated")):
        with pytest.raises(argparse.ArgumentTypeError, match=needle):
            parse(bad)


def test_prepare_out_dir_creates_parents_and_refuses_files(tmp_path):
    out = prepare_out_dir(tmp_path / "a" / "b")
    assert out.is_dir()
    f = tmp_path / "f"
    f.write_text("x")
    for bad in (f, f / "sub"):
        with pytest.raises(UsageError, match=f"--flag {bad}"):
            prepare_out_dir(bad, "--flag")
    with pytest.raises(UsageError, match="empty"):
        prepare_out_dir("  ")
    assert not list(out.iterdir())  # the write probe leaves nothing behind


def test_prepare_out_file_needs_a_file_path_in_a_usable_folder(tmp_path):
    assert prepare_out_file(tmp_path / "new" / "r.json", "--json") == tmp_path / "new" / "r.json"
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "r.json").exists()
    with pytest.raises(UsageError, match="is a folder"):
        prepare_out_file(tmp_path, "--json")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="--json .*its folder"):
        prepare_out_file(tmp_path / "f" / "r.json", "--json")


def test_input_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("x")
    assert input_file(f, "--text-file") == f
    with pytest.raises(UsageError, match="no such file"):
        input_file(tmp_path / "nope", "--text-file")
    with pytest.raises(UsageError, match="is a folder"):
        input_file(tmp_path, "--text-file")


def test_run_guarded_turns_only_user_errors_into_exit_2(capsys):
    def fail(exc):
        def run():
            raise exc
        return run

    assert run_guarded("prog", fail(ValueError("bad --x"))) == 2
    assert capsys.readouterr().err == "prog: error: bad --x\n"
    assert run_guarded("prog", fail(FileNotFoundError(2, "No such file or directory", "/nope"))) == 2
    assert "/nope: No such file or directory" in capsys.readouterr().err
    assert run_guarded("prog", fail(KeyboardInterrupt())) == 130

    class Custom(Exception):
        pass

    assert run_guarded("prog", fail(Custom("user")), (Custom,)) == 2
    with pytest.raises(RuntimeError):  # a bug is not a user error: it keeps its traceback
        run_guarded("prog", fail(RuntimeError("bug")))
    with pytest.raises(TypeError):
        run_guarded("prog", fail(TypeError("bug")))


def test_parse_args_returns_argparse_exit_codes(capsys):
    p = argparse.ArgumentParser(prog="prog")
    p.add_argument("--n", type=bounded_int(1, 2))
    assert parse_args(p, ["--n", "1"]).n == 1
    assert parse_args(p, ["--n", "5"]) == 2
    assert "argument --n" in capsys.readouterr().err
    assert parse_args(p, ["--help"]) == 0

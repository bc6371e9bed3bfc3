"""The CLI's `--dtype` choices are exactly the names `load_model(dtype=)` accepts, and reach it."""

from steerlens import cli
from steerlens.backend.loading import DTYPE_NAMES


def test_cli_dtype_choices_match_load_model():
    assert set(cli.DTYPE_CHOICES) == set(DTYPE_NAMES)


def test_cli_rejects_an_unknown_dtype(capsys):
    code = cli.main(["extract", "--pairs", "behaviour:sentiment", "--dtype", "int8", "--out", "/tmp/x"])
    assert code == 2
    msg = capsys.readouterr().err
    assert "--dtype" in msg and "bfloat16" in msg

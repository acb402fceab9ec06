"""The command framework (one module per subcommand, one log handler) and the one model loader."""

import subprocess
import sys

import pytest

from seisbench_feq import FEQ3, LEQNet
from seisbench_feq.cli import SUBCOMMANDS, build_parser
from seisbench_feq.loading import ModelSpecError, load_model, model_label, weights_label


def test_every_subcommand_is_registered():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(choices) >= {name for name, _ in SUBCOMMANDS}  # a module may add more (train-report)


def test_export_choices_in_the_cli_match_the_module():
    from seisbench_feq import export
    from seisbench_feq.cli import export as cli_export

    assert cli_export.FORMATS == export.FORMATS and cli_export.GRAPHS == export.GRAPHS
    assert cli_export.INT8_MODES == export.INT8_MODES and cli_export.DEFAULT_OPSET == export.DEFAULT_OPSET


@pytest.mark.timeout(300)
def test_one_handler_and_each_warning_once():
    code = (
        "import logging, seisbench\n"
        "from seisbench_feq.cli._logs import configure_logging\n"
        "repeats = configure_logging()\n"
        "for _ in range(5):\n"
        "    seisbench.logger.warning('the same SeisBench warning')\n"
        "logging.getLogger('seisbench_feq').warning(repeats.summary())\n"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=280).stderr
    assert err.count("the same SeisBench warning") == 1, err
    assert "4 repeat(s) of 1 warning(s)" in err


@pytest.mark.timeout(300)
def test_bad_arguments_exit_2():
    run = subprocess.run([sys.executable, "-m", "seisbench_feq.cli", "export"], capture_output=True, text=True, timeout=280)
    assert run.returncode == 2 and "required" in run.stderr


def test_load_model_grammar(tmp_path):
    FEQ3().save(tmp_path / "student")
    assert type(load_model("feq3")) is FEQ3 and weights_label(load_model("feq3")).startswith("default")
    for spec in (str(tmp_path / "student"), str(tmp_path / "student.pt"), f"feq3:{tmp_path / 'student'}"):
        model = load_model(spec)
        assert type(model) is FEQ3 and not model.training
        assert model_label(spec) == "FEQ3 (student)"
    assert type(load_model(f"leqnet:{tmp_path / 'student'}")) is LEQNet  # an explicit class wins
    random_a, random_b = load_model("feq3", "random"), load_model("feq3:random")
    assert weights_label(random_a) == "random(seed=0)"
    assert all((a == b).all() for a, b in zip(random_a.parameters(), random_b.parameters()))
    assert type(load_model("seisbench_feq.models:LEQNet")) is LEQNet
    assert type(load_model("random-eqtransformer")).__name__ == "EQTransformer"


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights nonexist.pt: no nonexist.json beside it"):
        load_model("nonexist.pt")
    with pytest.raises(FileNotFoundError, match="not a known model name"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ModelSpecError, match="eqt-original:PATH.h5"):
        load_model("eqt-original")
    with pytest.raises(FileNotFoundError, match="none.h5 does not exist"):
        load_model(f"eqt-original:{tmp_path / 'none.h5'}")
    (tmp_path / "trunc.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ValueError, match="trunc.h5"):
        load_model(str(tmp_path / "trunc.h5"))
    (tmp_path / "w.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no w.pt beside it"):
        load_model(str(tmp_path / "w"))


@pytest.mark.timeout(300)
def test_load_model_converts_keras_files_by_type():
    from conftest import shared_path

    h5 = shared_path("weights", "leqnet_original", "final_model.h5")
    model = load_model(str(h5))
    assert type(model) is LEQNet and model_label(f"leqnet-original:{h5}") == "LEQNet original (converted)"
    with pytest.raises(ValueError, match="not a eqtransformer"):
        load_model(f"eqt-original:{h5}")


def test_weights_prefix_finds_the_versioned_files_train_writes(tmp_path):
    """`seisbench-feq train --save-weights DIR` writes DIR/default.json.v1 + .pt.v1; `NAME:DIR/default` loads them."""
    import torch

    from seisbench_feq import FEQ3
    from seisbench_feq.loading import load_model

    torch.manual_seed(0)
    model = FEQ3()
    model.save(tmp_path / "default", version_str="1")
    loaded = load_model(f"feq3:{tmp_path / 'default'}")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert type(load_model(str(tmp_path / "default"))).__name__ == "FEQ3"


# ---- one grammar: --out is a folder, --stations a selection, old spellings hidden + warned ----

def _help(command: str) -> str:
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[command].format_help()


def test_old_spellings_are_hidden_and_set_the_new_option(caplog):
    import logging

    from seisbench_feq.cli._grammar import flush_deprecations

    parser = build_parser()
    for argv, dest, value in (
        (["associate", "p.csv", "--stations", "s.csv"], "stations", "s.csv"),
        (["associate", "p.csv", "--inventory", "s.xml"], "stations", "s.xml"),
        (["associate", "p.csv", "--station-file", "s.csv", "--threads", "3"], "threads", 3),
        (["compare", "a.xml", "b.xml", "--report-dir", "rep"], "out", "rep"),
        (["compare", "a.xml", "b.xml", "--stations", "s.csv"], "stations", "s.csv"),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="seisbench_feq"):
            args = parser.parse_args(argv)
            flush_deprecations()  # what cli.main does once logging is set up
        assert getattr(args, dest) == value
        assert any(r.getMessage().startswith("deprecated:") for r in caplog.records), argv
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seisbench_feq"):
        args = parser.parse_args(["associate", "p.csv", "--station-file", "s.csv", "--pyocto-threads", "2"])
        flush_deprecations()
    assert (args.stations, args.threads, args.out) == ("s.csv", 2, "catalog_output") and not caplog.records
    assert "--station-file" in _help("associate") and "--inventory" not in _help("associate")
    assert "--threads" not in _help("associate").replace("--pyocto-threads", "")
    assert "--report-dir" not in _help("compare") and "--station-file" in _help("compare")
    assert "--stations" in _help("pick")  # the selection keeps its name


def test_out_is_a_folder_and_the_old_file_form_still_works(tmp_path, caplog):
    import logging

    from seisbench_feq.cli._grammar import output_file

    with caplog.at_level(logging.WARNING, logger="seisbench_feq"):
        assert output_file(tmp_path / "cat", "catalog.xml", old_suffixes=(".xml",)) == tmp_path / "cat" / "catalog.xml"
        assert (tmp_path / "cat").is_dir() and not caplog.records
        old = output_file(tmp_path / "deep" / "c.xml", "catalog.xml", old_suffixes=(".xml",), command="associate")
    assert old == tmp_path / "deep" / "c.xml" and (tmp_path / "deep").is_dir()
    assert [r.getMessage() for r in caplog.records][0].startswith("deprecated: associate --out")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file; --out is an output folder"):
        output_file(tmp_path / "afile", "catalog.xml")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        output_file(tmp_path / "afile" / "sub", "catalog.xml")


@pytest.mark.timeout(300)
def test_export_out_folder_gets_the_fixed_name(tmp_path, capsys):
    from seisbench_feq.cli import main

    assert main(["export", "feq3", "--weights", "random", "--format", "torchscript", "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "feq3.pt").stat().st_size > 0
    assert main(["export", "feq3", "--weights", "random", "--format", "torchscript", "--out", str(tmp_path / "old.pt")]) == 0
    assert (tmp_path / "old.pt").stat().st_size > 0  # the old file meaning, one release

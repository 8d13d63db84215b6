"""Tests of the ``sk-cae fit``, ``score`` and ``evaluate`` commands."""

import io
import json
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from sk_cae.cli import main

pd = pytest.importorskip("pandas")
pytest.importorskip("safetensors")
pytest.importorskip("skops")

FIT_OPTIONS = ["--max-epochs", "3", "--random-state", "0"]


def _parts(n_rows=240, seed=0):
    """Sensor readings of parts: 12 cracked ones with high pressure."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "serial": [f"{i:05d}" for i in range(n_rows)],
            "pressure": rng.normal(10.0, 2.0, n_rows),
            "temperature": rng.normal(80.0, 5.0, n_rows),
            "line": rng.choice(["north", "south"], n_rows),
            "status": "ok",
        }
    )
    frame.loc[:11, "pressure"] += 15.0
    frame.loc[:11, "status"] = "cracked"
    frame.loc[15, "temperature"] = np.nan
    frame.loc[14, "status"] = np.nan
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def parts_csv(workdir):
    path = workdir / "parts.csv"
    _parts().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def model_path(workdir, parts_csv):
    path = workdir / "parts.skcae"
    code = main(
        [
            "fit",
            str(parts_csv),
            "--label-column",
            "status",
            "--defect-value",
            "cracked",
            "--id-column",
            "serial",
            "--model",
            str(path),
            *FIT_OPTIONS,
        ]
    )
    assert code == 0
    return path


def _fails_cleanly(capsys, argv, message):
    """Run the command line and check that it fails with exit code 2 and
    ``message`` on stderr, without a traceback."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err), captured.err
    assert "Traceback" not in captured.err
    return captured.err


# ------------------------------------------------------------------- fit


def test_fit_prints_one_line_summary(capsys, workdir, parts_csv):
    path = workdir / "summary.skcae"
    argv = ["fit", str(parts_csv), "--label-column", "status"]
    argv += ["--defect-value", "cracked", "--model", str(path), *FIT_OPTIONS]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert "Trained on 240 rows (12 labeled defects;" in lines[0]
    assert "for 3 epochs" in lines[0]
    assert re.search(r"reconstruction [\d.e-]+, repulsion", lines[0])
    assert path.exists()


def test_fit_saves_whole_pipeline(model_path):
    from sklearn.compose import ColumnTransformer

    from sk_cae import ContrastiveAEDetector
    from sk_cae.io import load, read_manifest

    model = load(model_path)
    assert isinstance(model[0], ColumnTransformer)
    assert isinstance(model[-1], ContrastiveAEDetector)
    assert list(model.feature_names_in_) == ["pressure", "temperature", "line"]
    assert model[-1].n_defects_ == 12
    manifest = read_manifest(model_path)
    assert manifest["detector"]["params"]["max_epochs"] == 3
    assert manifest["detector"]["params"]["callbacks"] is None


def test_fit_progress_bar_on_terminal(capsys, monkeypatch, workdir):
    path = workdir / "small.csv"
    _parts(n_rows=60).to_csv(path, index=False)
    argv = ["fit", str(path), "--label-column", "status", "--defect-value"]
    argv += ["cracked", "--model", str(workdir / "bar.skcae"), *FIT_OPTIONS]

    assert main(argv) == 0
    assert "epoch" not in capsys.readouterr().err

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(argv) == 0
    assert re.search(r"training: .*\d/3 \[", capsys.readouterr().err)


def test_fit_rejects_missing_label_column(capsys, parts_csv, workdir):
    argv = ["fit", str(parts_csv), "--label-column", "quality"]
    argv += ["--model", str(workdir / "x.skcae")]
    error = _fails_cleanly(capsys, argv, r"no column 'quality' \(the label column\)")
    assert "Its columns are: 'serial', 'pressure', 'temperature'" in error
    assert not (workdir / "x.skcae").exists()


def test_fit_rejects_no_defect_rows(capsys, parts_csv, workdir):
    argv = ["fit", str(parts_csv), "--label-column", "status"]
    argv += ["--model", str(workdir / "x.skcae")]
    _fails_cleanly(
        capsys,
        argv,
        r"has no defect rows: .*--defect-value '1' "
        r"\(values found: 'cracked', 'ok'\)",
    )


def test_fit_rejects_date_column(capsys, workdir):
    path = workdir / "dated.parquet"
    pytest.importorskip("pyarrow")
    frame = _parts(n_rows=40).assign(made=pd.Timestamp("2024-01-01"))
    frame.to_parquet(path)
    argv = ["fit", str(path), "--label-column", "status", "--defect-value"]
    argv += ["cracked", "--model", str(workdir / "x.skcae")]
    _fails_cleanly(capsys, argv, "'made' .* datetime64.*--ignore-column 'made'")


def test_fit_rejects_bad_cell_in_numeric_column(capsys, workdir):
    path = workdir / "bad_cell.csv"
    frame = _parts(n_rows=60)
    frame["pressure"] = frame["pressure"].astype(object)
    frame.loc[7, "pressure"] = "abc"
    frame.to_csv(path, index=False)
    argv = ["fit", str(path), "--label-column", "status", "--defect-value"]
    argv += ["cracked", "--model", str(workdir / "x.skcae")]
    _fails_cleanly(
        capsys, argv, "'pressure' .* holds numbers except for 'abc' in data row 8"
    )


def test_fit_rejects_date_text_column(capsys, workdir):
    path = workdir / "dated.csv"
    frame = _parts(n_rows=60)
    frame["made"] = pd.date_range("2024-01-01", periods=60).strftime("%Y-%m-%d")
    frame.to_csv(path, index=False)
    argv = ["fit", str(path), "--label-column", "status", "--defect-value"]
    argv += ["cracked", "--model", str(workdir / "x.skcae")]
    _fails_cleanly(capsys, argv, "'made' .* contains dates.*--ignore-column 'made'")


def test_fit_rejects_unknown_file_type(capsys, workdir):
    path = workdir / "parts.xlsx"
    path.write_bytes(b"")
    argv = ["fit", str(path), "--label-column", "status", "--model", "x.skcae"]
    _fails_cleanly(capsys, argv, "expected a .csv file .* or a .parquet file")


def test_fit_rejects_missing_data_file(capsys, workdir):
    argv = ["fit", str(workdir / "nowhere.csv"), "--label-column", "status"]
    argv += ["--model", "x.skcae"]
    _fails_cleanly(capsys, argv, "nowhere.csv: no such data file")


@pytest.mark.parametrize(
    "labels, value, expected",
    [
        (["1", "0", "1.0", None], "1", [True, False, True, False]),
        ([1, 0, 1, 0], "1", [True, False, True, False]),
        ([True, False, True, False], "true", [True, False, True, False]),
        ([True, False, True, False], "1", [True, False, True, False]),
        (["cracked", "ok", " cracked", None], "cracked", [True, False, True, False]),
        ([2.0, np.nan, 2.0, 1.0], "2", [True, False, True, False]),
        (["True", "False", "true", None], "1", [True, False, True, False]),
        (["True", "False", "True", "False"], "true", [True, False, True, False]),
    ],
)
def test_defect_value_matches_text_and_numbers(labels, value, expected):
    from sk_cae._cli_tables import defect_mask

    mask = defect_mask(pd.Series(labels), value)
    np.testing.assert_array_equal(mask, expected)


# ----------------------------------------------------------------- score


def test_score_writes_row_per_input(capsys, model_path, parts_csv, workdir):
    from sk_cae.io import load

    out = workdir / "scores.csv"
    argv = ["score", str(model_path), str(parts_csv), "--id-column", "serial"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "Scored 240 rows" in capsys.readouterr().err

    scores = pd.read_csv(out, dtype={"serial": str})
    parts = pd.read_csv(parts_csv, dtype={"serial": str})
    assert list(scores.columns) == ["serial", "score", "flag"]
    assert list(scores["serial"]) == list(parts["serial"])
    expected = load(model_path).decision_function(
        parts[["pressure", "temperature", "line"]]
    )
    np.testing.assert_allclose(scores["score"], expected, rtol=1e-12)
    np.testing.assert_array_equal(scores["flag"], (expected < 0).astype(int))
    assert not (workdir / "scores.csv.partial").exists()


def test_score_chunks_match_single_pass(capsys, model_path, parts_csv, workdir):
    argv = ["score", str(model_path), str(parts_csv)]
    assert main([*argv, "--out", str(workdir / "whole.csv")]) == 0
    argv += ["--chunk-rows", "7", "--out", str(workdir / "chunked.csv")]
    assert main(argv) == 0
    whole = pd.read_csv(workdir / "whole.csv")
    chunked = pd.read_csv(workdir / "chunked.csv")
    assert list(whole.columns) == ["score", "flag"]
    pd.testing.assert_frame_equal(whole, chunked)


def test_score_reads_and_writes_parquet(capsys, model_path, parts_csv, workdir):
    pytest.importorskip("pyarrow")
    parquet = workdir / "parts.parquet"
    pd.read_csv(parts_csv, dtype={"serial": str}).to_parquet(parquet)
    argv = ["score", str(model_path), str(parquet), "--id-column", "serial"]
    assert main([*argv, "--chunk-rows", "50", "--out", str(workdir / "s.parquet")]) == 0
    assert (
        main(["score", str(model_path), str(parts_csv), "--id-column", "serial"]) == 0
    )
    from_stdout = pd.read_csv(
        io.StringIO(capsys.readouterr().out), dtype={"serial": str}
    )
    from_parquet = pd.read_parquet(workdir / "s.parquet")
    assert len(from_parquet) == 240
    np.testing.assert_array_equal(from_parquet["serial"], from_stdout["serial"])
    np.testing.assert_allclose(from_parquet["score"], from_stdout["score"])
    np.testing.assert_array_equal(from_parquet["flag"], from_stdout["flag"])


def test_score_handles_unseen_category(capsys, model_path, workdir):
    path = workdir / "new.csv"
    _parts(n_rows=20, seed=1).assign(line="west").to_csv(path, index=False)
    assert main(["score", str(model_path), str(path)]) == 0
    scores = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(scores) == 20
    assert np.isfinite(scores["score"]).all()


def test_score_rejects_missing_feature_column(capsys, model_path, workdir):
    path = workdir / "no_pressure.csv"
    _parts(n_rows=20).drop(columns="pressure").to_csv(path, index=False)
    error = _fails_cleanly(
        capsys,
        ["score", str(model_path), str(path)],
        r"no column 'pressure' \(a model feature\)",
    )
    assert "Its columns are: 'serial', 'temperature', 'line', 'status'" in error


def test_score_rejects_text_in_numeric_column(capsys, model_path, workdir):
    path = workdir / "typo.csv"
    frame = _parts(n_rows=20)
    frame["pressure"] = frame["pressure"].astype(object)
    frame.loc[13, "pressure"] = "12,5"
    frame.to_csv(path, index=False)
    _fails_cleanly(
        capsys,
        ["score", str(model_path), str(path), "--chunk-rows", "5"],
        "'pressure' .* contains '12,5' in data row 14, where the model expects",
    )


def test_score_rejects_model_from_other_version(
    capsys, model_path, parts_csv, tmp_path
):
    path = tmp_path / "future.skcae"
    with zipfile.ZipFile(model_path) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "manifest.json":
                manifest = json.loads(data)
                manifest["format_version"] = 2
                manifest["created_by"]["sk_cae"] = "9.1.0"
                data = json.dumps(manifest).encode()
            target.writestr(info.filename, data)
    _fails_cleanly(
        capsys,
        ["score", str(path), str(parts_csv)],
        "written by sk_cae 9.1.0 in model-file format 2",
    )


def test_score_rejects_file_that_is_not_a_model(capsys, parts_csv):
    _fails_cleanly(
        capsys,
        ["score", str(parts_csv), str(parts_csv)],
        "is not an sk_cae model file",
    )


# -------------------------------------------------------------- evaluate


def test_evaluate_prints_metrics(capsys, model_path, parts_csv):
    argv = ["evaluate", str(model_path), str(parts_csv), "--label-column", "status"]
    assert main([*argv, "--defect-value", "cracked", "--chunk-rows", "50"]) == 0
    output = capsys.readouterr().out
    assert "Rows: 240 (12 defects, 228 other rows)" in output
    values = {
        name: float(value)
        for name, value in re.findall(r"(Defect [\w ]+?):\s+([\d.]+)", output)
    }
    assert 0.5 < values["Defect average precision"] <= 1.0
    assert 0.5 < values["Defect ROC AUC"] <= 1.0
    assert re.search(r"precision [\d.na/]+, recall [\d.]+", output)
    defect_row = re.search(r"^defect\s+(\d+)\s+(\d+)$", output, re.MULTILINE)
    other_row = re.search(r"^not defect\s+(\d+)\s+(\d+)$", output, re.MULTILINE)
    assert sum(map(int, defect_row.groups())) == 12
    assert sum(map(int, other_row.groups())) == 228


def test_evaluate_rejects_no_defect_rows(capsys, model_path, workdir):
    path = workdir / "all_ok.csv"
    _parts(n_rows=30).assign(status="ok").to_csv(path, index=False)
    argv = ["evaluate", str(model_path), str(path), "--label-column", "status"]
    _fails_cleanly(
        capsys,
        [*argv, "--defect-value", "cracked"],
        r"has no defect rows: .*\(values found: 'ok'\)",
    )


def test_evaluate_rejects_missing_label_column(capsys, model_path, parts_csv):
    argv = ["evaluate", str(model_path), str(parts_csv), "--label-column", "y"]
    _fails_cleanly(capsys, argv, r"no column 'y' \(the label column\)")


# ------------------------------------------------------------------ help


@pytest.mark.parametrize("command", ["fit", "score", "evaluate"])
def test_help_shows_examples(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    assert re.search(r"^examples?:", output, re.MULTILINE)
    assert f"sk-cae {command} " in output


def test_error_exit_code_from_process(parts_csv, tmp_path):
    """The installed command exits with 2 and prints no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "sk_cae", "fit", str(parts_csv)]
        + ["--label-column", "nope", "--model", str(tmp_path / "x.skcae")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "sk-cae fit: error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_score_rejects_file_without_rows(capsys, model_path, workdir):
    path = workdir / "header_only.csv"
    _parts(n_rows=5).head(0).to_csv(path, index=False)
    argv = ["score", str(model_path), str(path)]
    _fails_cleanly(capsys, argv, "header_only.csv has no data rows")

"""Tests of the ``sk-cae`` command line."""

import re
import subprocess
import sys

import pytest

from sk_cae.cli import main


@pytest.mark.slow
def test_demo_prints_table_where_contrast_wins(capsys):
    assert main(["demo"]) == 0
    output = capsys.readouterr().out
    rows = {}
    for line in output.splitlines():
        match = re.match(
            r"(plain autoencoder|contrastive autoencoder).*?"
            r"([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
            line,
        )
        if match:
            rows[match.group(1)] = [float(value) for value in match.groups()[1:]]
    assert set(rows) == {"plain autoencoder", "contrastive autoencoder"}
    plain_ap, _, plain_vs_other, _ = rows["plain autoencoder"]
    ap, auc, vs_other, _ = rows["contrastive autoencoder"]
    assert ap > plain_ap
    assert vs_other > plain_vs_other
    assert 0.5 < auc <= 1.0


def test_module_entry_point_prints_help():
    result = subprocess.run(
        [sys.executable, "-m", "sk_cae", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--n-labeled" in result.stdout
    assert "example: sk-cae demo" in result.stdout

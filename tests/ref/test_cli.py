"""The ``hsd-ref audit`` command: every registered scheme verified or caught, markdown output."""

import subprocess
import sys

from hsd_ref import SCHEMES
from hsd_ref.cli import audit_row, main


def test_audit_row_for_a_lossless_and_a_lossy_scheme():
    row = audit_row("tokenwise")
    assert row["claimed"] and row["lossless"] and row["max_tv"] == 0 and row["coupling"] == "within"
    row = audit_row("hsd_released")
    assert not row["claimed"] and not row["lossless"] and row["max_tv"] > 0 and "counterexample" in row["counterexample"]


def test_audit_markdown_lists_every_scheme_and_exits_zero(tmp_path, capsys):
    out = tmp_path / "audit.md"
    assert main(["audit", "--markdown", "--jobs", "1", "--quiet", "--schemes", "tokenwise", "lenience", "-o", str(out)]) == 0
    text = out.read_text()
    assert "| tokenwise | lossless | verified lossless |" in text
    assert "| lenience | lossy | lossy, caught |" in text and "## Counterexamples" in text


def test_audit_unknown_scheme_is_a_clear_error(capsys):
    assert main(["audit", "--schemes", "nope"]) == 2
    assert "unknown scheme 'nope'" in capsys.readouterr().err


def test_python_dash_m_entry_point_runs_the_whole_audit():
    proc = subprocess.run([sys.executable, "-m", "hsd_ref", "audit", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in SCHEMES:
        assert name in proc.stdout
    assert f"{len(SCHEMES)}/{len(SCHEMES)} schemes as claimed" in proc.stderr

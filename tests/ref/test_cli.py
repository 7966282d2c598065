"""The ``hsd-ref audit`` command: every registered scheme verified or caught, markdown output."""

import subprocess
import sys

import pytest

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


# ------------------------------------------------------------------------------------ regressions
# `hsd-ref audit -o /nonexistent/x.md` used to run the whole audit, then die with a traceback.


def _one_error_line(err: str, prefix: str) -> None:
    assert err.startswith(prefix) and err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err


def audit_must_not_run(name):
    raise AssertionError("the audit ran before its output path was checked")


def test_audit_output_path_is_checked_before_the_audit_runs(monkeypatch, capsys):
    import hsd_ref.cli as cli

    monkeypatch.setattr(cli, "audit_row", audit_must_not_run)
    assert cli.main(["audit", "--jobs", "1", "--quiet", "-o", "/nonexistent/x.md"]) == 2
    _one_error_line(capsys.readouterr().err, "hsd-ref audit: error: --output: cannot write '/nonexistent/x.md'")


def test_audit_output_path_that_is_a_directory_is_refused_first(monkeypatch, tmp_path, capsys):
    import hsd_ref.cli as cli

    monkeypatch.setattr(cli, "audit_row", audit_must_not_run)
    assert cli.main(["audit", "--jobs", "1", "-o", str(tmp_path)]) == 2
    _one_error_line(capsys.readouterr().err, "hsd-ref audit: error: --output: ")


@pytest.mark.parametrize(
    "argv, prefix",
    [
        (["audit", "--jobs", "0"], "hsd-ref audit: error: --jobs: "),
        (["audit", "--jobs", "x"], "hsd-ref audit: error: argument --jobs"),
        (["audit", "--schemes", "nope"], "hsd-ref audit: error: --schemes: unknown scheme 'nope'"),
        (["audit", "--no-such-option"], "hsd-ref audit: error: unrecognized arguments"),
        (["plan", "--costs", "d=x", "t=1", "--acceptance", "d:t=0.5"], "hsd-ref plan: error: --costs d: "),
        (["plan", "--config", "/nonexistent/plan.json"], "hsd-ref plan: error: --config"),
        (["no-such-command"], "hsd-ref: error: argument command"),
        ([], "hsd-ref: error: "),
    ],
)
def test_cli_errors_are_one_line_without_a_traceback(argv, prefix, capsys):
    assert main(argv) == 2
    _one_error_line(capsys.readouterr().err, prefix)


def test_plan_plot_path_is_checked_before_planning(capsys):
    argv = ["plan", "--costs", "d=0.1", "t=1", "--acceptance", "d:t=0.5", "--plot", "/nonexistent/plan.png"]
    assert main(argv) == 2
    _one_error_line(capsys.readouterr().err, "hsd-ref plan: error: --plot: ")

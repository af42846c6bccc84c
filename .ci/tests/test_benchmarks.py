"""The benchmarks run as the README documents (`python3 benchmarks/<script>.py …`) even when
`psycopg2` belongs to Odoo's interpreter only: they start again under Odoo's interpreter."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ("period_close.py", "nexacloud_import.py", "events_ingest.py")


def run(script, env):
    # -E -S: no site-packages nor PYTHONPATH, so this interpreter cannot import psycopg2 (a bare python3).
    return subprocess.run([sys.executable, "-E", "-S", os.path.join(ROOT, "benchmarks", script), "--help"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_python_without_psycopg2_runs_the_benchmark_with_odoos_interpreter(script):
    if not (shutil.which("odoo") or shutil.which("odoo-bin")):
        pytest.skip("no Odoo installed (odoo/odoo-bin on PATH)")
    env = dict(os.environ)
    env.pop("ODOO_PYTHON", None)
    result = run(script, env)
    assert result.returncode == 0, result.stdout
    assert "running with Odoo's interpreter" in result.stdout
    assert "--pg PG" in result.stdout  # its own usage: the script itself ran


def test_without_odoo_it_names_the_interpreter_to_use(tmp_path):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}  # no odoo command, no ODOO_PYTHON
    result = run("period_close.py", env)
    assert result.returncode != 0
    assert "cannot import psycopg2" in result.stdout and "ODOO_PYTHON" in result.stdout, result.stdout

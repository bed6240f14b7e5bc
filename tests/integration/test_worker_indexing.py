"""The app loads in the real Python language worker: `azure-functions-runtime`, the worker's library on PyPI,
indexes function_app.py and registers all six functions, checking each one's signature against its bindings as
the worker does when Azure starts the app (tests/integration/worker_indexing.py).

That library needs Python 3.13 or newer, and the project runs on 3.11, so the test looks for a newer interpreter on
the machine (WORKER_PYTHON, else python3.13+ on the PATH, else pyenv's versions; tests/newer_python.py), makes a
throw-away virtual environment with it and installs requirements-worker.txt there (about 10 s from pip's cache).
Where the machine has no such interpreter, it skips and says so.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from textwrap import dedent

import pytest
from newer_python import find_python

REPO = Path(__file__).resolve().parents[2]
INDEXING = Path(__file__).with_name("worker_indexing.py")
WORKER_MINIMUM = (3, 13)

EXPECTED = {
    "commands": ("httpTrigger", ["req"], "http"),
    "command_status": ("httpTrigger", ["req"], "http"),
    "itwin_webhook": ("httpTrigger", ["req"], "http"),
    "health": ("httpTrigger", ["req"], "http"),
    "command_worker": ("queueTrigger", ["msg"], None),
    "ledger_retention": ("timerTrigger", ["timer"], None),
}


@pytest.fixture(scope="module")
def worker_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh virtual environment holding azure-functions-runtime and the app's requirements."""
    python = find_python(WORKER_MINIMUM, override="WORKER_PYTHON")
    if python is None:
        pytest.skip(
            "no Python 3.13 or newer on this machine (WORKER_PYTHON, python3.13+ on the PATH, pyenv), "
            "so function_app.py was not loaded through the real worker library azure-functions-runtime"
        )
    venv = tmp_path_factory.mktemp("worker") / "venv"
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True, timeout=120)  # noqa: S603
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    installed = subprocess.run(  # noqa: S603 - pip of the new environment, the project's requirements file
        [*pip, "-r", str(REPO / "requirements-worker.txt")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv / "bin" / "python"


def _index(worker_python: Path, app_folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the worker environment's interpreter, our indexing script
        [str(worker_python), str(INDEXING), str(app_folder)], capture_output=True, text=True, timeout=300, check=False
    )


def test_the_real_worker_indexes_and_registers_all_six_functions_of_the_app(worker_python: Path):
    completed = _index(worker_python, REPO)

    assert completed.returncode == 0, completed.stderr[-3000:]
    functions = json.loads(completed.stdout)
    assert {f["name"]: (f["trigger"], f["parameters"], f["returns"]) for f in functions} == EXPECTED


def test_the_real_worker_refuses_a_function_whose_annotation_does_not_match_its_binding(
    worker_python: Path, tmp_path: Path
):
    # The check above can fail: a queue message annotated as an int is what the worker rejects at start-up.
    (tmp_path / "function_app.py").write_text(
        dedent(
            """
            import azure.functions as func

            app = func.FunctionApp()

            @app.queue_trigger(arg_name="msg", queue_name="q", connection="AzureWebJobsStorage")
            def wrong(msg: int) -> None:
                pass
            """
        ),
        encoding="utf-8",
    )

    completed = _index(worker_python, tmp_path)

    assert completed.returncode != 0
    assert "FunctionLoadError: cannot load the wrong function" in completed.stderr

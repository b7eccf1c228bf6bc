"""A real Label Studio round trip (issue 24 item 10): dcloop's config and tasks go into a
local Label Studio server over its REST API, the images serve from a Local Files storage,
two annotations come back through the JSON export and ``dcloop-import`` counts them.

The server is Label Studio's own ``label-studio`` executable, from ``$DCLOOP_LABEL_STUDIO``
or ``.venv-ls/bin/label-studio`` (a separate environment, so its pinned dependencies do not
touch dcloop's: ``python -m venv .venv-ls && .venv-ls/bin/pip install label-studio``). The
test skips, naming why, when there is none or it does not answer in time; in CI
(``CI`` set) ``.ci/run`` installs it and exports the variable, and a missing server fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from people_run import make_run
from PIL import Image

from dcloop.data import ImageFolder
from dcloop.people.cli import export_main, import_main

ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "DCLOOP_LABEL_STUDIO"
#: Seconds for a fresh server to migrate its database and answer (about 1-3 minutes on a
#: loaded 2-core machine).
START_TIMEOUT_S = float(os.environ.get("DCLOOP_LABEL_STUDIO_TIMEOUT", "600"))
TOKEN = "dcloop0test0token0123456789abcdef01234567"
USER, PASSWORD = "dcloop@example.com", "dcloop-test-password"
PREFIX = "/data/local-files/?d="


def _executable() -> str | None:
    given = os.environ.get(ENV_VAR)
    if given:
        if not Path(given).is_file():
            _skip_or_fail(f"{ENV_VAR}={given} is not a file; expected a label-studio executable")
        return given
    local = ROOT / ".venv-ls" / "bin" / "label-studio"
    return str(local) if local.is_file() else None


def _skip_or_fail(reason: str):
    if os.environ.get("CI") and os.environ.get(ENV_VAR):
        pytest.fail(reason)  # CI installed it: not coming up is a failure, not a skip
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Label Studio server on 127.0.0.1 with its own data folder; REST calls with the
    user's legacy token (enabled with ``--enable-legacy-api-token``)."""

    def __init__(self, exe: str, data_dir: Path, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "/",  # dcloop's sources are absolute
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LATEST_VERSION_CHECK": "false",  # no network
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "OMP_NUM_THREADS": "1",
        }
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    exe,
                    "start",
                    "--no-browser",
                    "--data-dir",
                    str(data_dir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--username",
                    USER,
                    "--password",
                    PASSWORD,
                    "--user-token",
                    TOKEN,
                    "--enable-legacy-api-token",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait(self, timeout_s: float) -> str | None:
        """``None`` once the API answers, else why not."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return f"label-studio exited with status {self.proc.returncode}: {self._tail()}"
            try:
                self.call("GET", "/api/projects")
                return None
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        return f"label-studio did not answer within {timeout_s:.0f} s: {self._tail()}"

    def _tail(self) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-3:])[-500:]

    def call(self, method: str, path: str, body=None, *, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Token {TOKEN}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=120) as res:
            content = res.read()
            return (res.status, content) if raw else json.loads(content or b"null")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)  # its own session: the server and its workers
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    exe = _executable()
    if exe is None:
        _skip_or_fail(
            f"no Label Studio: set {ENV_VAR} to a label-studio executable or install one into "
            f"{ROOT / '.venv-ls'} (python -m venv .venv-ls && .venv-ls/bin/pip install "
            "label-studio)"
        )
    tmp = tmp_path_factory.mktemp("labelstudio")
    srv = Server(exe, tmp / "data", tmp / "server.log")
    try:
        why = srv.wait(START_TIMEOUT_S)
        if why is not None:
            _skip_or_fail(why)
        yield srv
    finally:
        srv.stop()


def _image_folder(root: Path, classes=("cat", "dog", "fox", "owl"), per_class=15) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.full((8, 8, 3), 40 + 50 * k, dtype=np.uint8) + rng.integers(0, 20, (8, 8, 3))
            Image.fromarray(arr.astype(np.uint8), "RGB").save(root / name / f"{i}.png")
    return root


@pytest.mark.slow  # a fresh server migrates its database: 1-3 minutes
def test_round_trip_through_a_real_label_studio(server, tmp_path, capsys):
    data = _image_folder(tmp_path / "my images & #1")  # a URL must quote them
    run = tmp_path / "run"
    make_run(run, source=ImageFolder(data, image_size=8))

    # dcloop-export: the tasks with the local-files prefix, and the folder to connect
    assert export_main([str(run), "--url-prefix", PREFIX]) == 0
    out = capsys.readouterr().out
    [line] = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("storage ")]
    storage = line.removeprefix("storage").split("  (connect")[0].strip()
    assert Path(storage) == data
    relabel = run / "relabel"
    tasks = json.loads((relabel / "relabel_queue_labelstudio.json").read_text())
    assert len(tasks) >= 2

    project = server.call(
        "POST",
        "/api/projects",
        {"title": "dcloop", "label_config": (relabel / "labelstudio_config.xml").read_text()},
    )
    pid = project["id"]
    imported = server.call("POST", f"/api/projects/{pid}/import", tasks)
    assert imported["task_count"] == len(tasks), imported
    assert imported["prediction_count"] == len(tasks), imported

    # an image is a 404 until a Local Files storage serves its folder (docs/people.md step 4)
    first = tasks[0]["data"]
    with pytest.raises(urllib.error.HTTPError, match="404"):
        server.call("GET", first["image"], raw=True)
    # not synced: the tasks are dcloop's, the storage only serves the files
    server.call(
        "POST",
        "/api/storages/localfiles",
        {"project": pid, "title": "dcloop data", "path": storage, "use_blob_urls": False},
    )
    status, body = server.call("GET", first["image"], raw=True)
    assert status == 200 and body == Path(first["source"]).read_bytes()

    listed = server.call("GET", f"/api/tasks?project={pid}&page_size=1000")
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    by_index = {t["data"]["index"]: t for t in listed}
    assert sorted(by_index) == sorted(t["data"]["index"] for t in tasks)

    # one correction (the suggested label), one confirmation (the given label)
    corrected, confirmed = tasks[0], tasks[1]
    picks = {
        corrected["data"]["index"]: corrected["predictions"][0]["result"][0]["value"]["choices"],
        confirmed["data"]["index"]: [confirmed["data"]["given_label"]],
    }
    assert picks[corrected["data"]["index"]] != [corrected["data"]["given_label"]]
    for index, choice in picks.items():
        server.call(
            "POST",
            f"/api/tasks/{by_index[index]['id']}/annotations",
            {
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": choice},
                    }
                ]
            },
        )

    export = server.call("GET", f"/api/projects/{pid}/export?exportType=JSON")
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    capsys.readouterr()
    assert import_main([str(run), str(path), "--out", str(tmp_path / "labels_v1.csv")]) == 0
    assert "1 corrected, 1 confirmed" in capsys.readouterr().out


def test_the_executable_is_found_from_the_variable(monkeypatch, tmp_path):
    fake = tmp_path / "label-studio"
    fake.write_text("")
    monkeypatch.setenv(ENV_VAR, str(fake))
    assert _executable() == str(fake)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="missing is not a file; expected a label"):
        _executable()


def test_no_server_in_ci_is_a_failure(monkeypatch):
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv(ENV_VAR, "/x")
    with pytest.raises(pytest.fail.Exception, match="down"):
        _skip_or_fail("down")
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(pytest.skip.Exception, match="down"):
        _skip_or_fail("down")


def test_task_urls_quote_the_path_after_a_prefix():
    import pandas as pd

    from dcloop.people.export import labelstudio_tasks

    queue = pd.DataFrame(
        {
            "rank": [1],
            "index": [0],
            "source": ["/data/my images & #1/a?.png"],
            "given_name": ["cat"],
            "suggested_name": ["dog"],
            "quality": [0.1],
        }
    )
    [task] = labelstudio_tasks(queue, url_prefix=PREFIX)
    assert task["data"]["image"] == PREFIX + "/data/my%20images%20%26%20%231/a%3F.png"
    assert urllib.parse.unquote(task["data"]["image"].removeprefix(PREFIX)) == queue.source[0]
    assert task["data"]["source"] == queue.source[0]  # what dcloop-import matches on
    [raw] = labelstudio_tasks(queue)  # no prefix: the path as it is
    assert raw["data"]["image"] == queue.source[0]

"""``serve.background.running_server``: a server process started, awaited on /healthz and stopped."""

from __future__ import annotations

import subprocess
import sys

import pytest

from torchdetr.serve import background
from torchdetr.serve.background import ServerStartError, free_port, running_server

HEALTHY_SERVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_the_server_runs_while_the_block_runs_and_is_stopped_after(tmp_path):
    port = free_port()
    with running_server([sys.executable, "-c", HEALTHY_SERVER, str(port)], port, startup_timeout_s=30) as process:
        assert process.poll() is None
    assert process.poll() is not None  # stopped on leaving the block


def test_a_server_that_exits_is_an_error_with_its_log(tmp_path):
    port = free_port()
    with (tmp_path / "server.log").open("w") as log, pytest.raises(ServerStartError, match="exited with 3: bad model"):
        with running_server([sys.executable, "-c", "import sys; print('bad model', flush=True); sys.exit(3)"], port,
                            log=log, startup_timeout_s=30):
            pytest.fail("the block must not run")


def test_a_server_that_never_answers_is_stopped_after_the_timeout(monkeypatch):
    """The process is terminated and reaped (its exit status collected), not left running or a zombie."""
    started, popen = [], subprocess.Popen

    def recording_popen(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(background.subprocess, "Popen", recording_popen)  # the real Popen, remembered
    with pytest.raises(ServerStartError, match="did not answer /healthz within 1 s"):
        with running_server([sys.executable, "-c", "import time; time.sleep(60)"], free_port(), startup_timeout_s=1):
            pytest.fail("the block must not run")
    [process] = started
    assert process.returncode is not None  # Popen.returncode is set once the process has been waited for

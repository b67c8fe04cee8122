"""``serve.background.running_server``: a server process started, awaited on /healthz and stopped."""

from __future__ import annotations

import os
import sys

import pytest

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


def test_a_server_that_never_answers_is_stopped_after_the_timeout(tmp_path):
    port, pid_file = free_port(), tmp_path / "pid"
    silent = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with pytest.raises(ServerStartError, match="did not answer /healthz within 5 s"):
        with running_server([sys.executable, "-c", silent], port, startup_timeout_s=5):
            pytest.fail("the block must not run")
    with pytest.raises(ProcessLookupError):  # terminated and reaped, not left running
        os.kill(int(pid_file.read_text()), 0)

"""A fork server for ``make mutate``: imports the heavy third-party modules once (pytest, hypothesis, pyarrow,
...), then forks a fresh child per mutant that imports gpdata (the mutated copy) and runs pytest. It saves the
2 s or so of imports every mutant would otherwise pay.

    python _forkserver.py SOCKET

Never gpdata itself, nor the tests, is imported before the fork. If importing starts a thread (a fork would copy
the process without it), the server refuses to start (exit 3) and mutation/run.py runs each mutant in a new
process instead. Requests are JSON lines ``{"args", "cwd", "env", "output", "timeout"}``; the answer is the
exit code of pytest in the child.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import sys

PRELOAD = ("pytest", "_pytest.python", "_pytest.fixtures", "hypothesis", "hypothesis.strategies", "numpy",
           "pyarrow", "pyarrow.compute", "pyarrow.parquet", "pyarrow.dataset", "pyarrow.csv", "yaml", "pydantic",
           "orjson", "jinja2", "cryptography.hazmat.primitives.kdf.hkdf", "xdist.plugin", "pytest_timeout")


def _threads() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 1


def _child(request: dict) -> None:
    os.setsid()
    fd = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.alarm(int(request["timeout"]))  # the client may be gone: never outlive the mutant's timeout
    import pytest

    code = pytest.main(request["args"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


def main(path: str) -> int:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    if any(name == "gpdata" or name.startswith(("gpdata.", "tests")) for name in sys.modules):
        return 3
    if _threads() != 1:
        return 3
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(2)
    while True:
        conn, _ = server.accept()
        with conn:
            request = json.loads(conn.makefile("r").readline())
            if request == "stop":
                return 0
            pid = os.fork()
            if pid == 0:
                server.close()
                try:
                    _child(request)
                finally:
                    os._exit(70)
            _, status = os.waitpid(pid, 0)
            try:
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

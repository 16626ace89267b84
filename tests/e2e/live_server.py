"""A real ``fraudscore serve`` process for end-to-end tests: start, wait ready, read logs, stop.

The server runs in its own session (process group), so a teardown can always kill it and
whatever it started, even when a test failed half-way. Its stdout and stderr go to files
(a pipe nobody reads would fill up and block the server).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# How often the servers started by the tests check the registry's ACTIVE pointer (seconds).
POLL_INTERVAL_S = 0.2


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def http_client(base_url: str, **kwargs: Any) -> httpx2.Client:
    """A client of the live server that ignores proxy variables of the environment."""
    kwargs.setdefault("timeout", 10.0)
    return httpx2.Client(base_url=base_url, trust_env=False, **kwargs)


@dataclass
class LiveServer:
    """A running ``fraudscore serve`` process."""

    process: subprocess.Popen[bytes]
    base_url: str
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stderr_lines(self) -> list[str]:
        """The complete lines on stderr so far (not one still being written)."""
        text = self.stderr()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines.pop()
        return lines

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines on stderr so far (a line that is not JSON is skipped)."""
        return [json.loads(line) for line in self.stderr_lines() if is_json_object(line)]

    def wait_for_log(self, message: str, timeout_s: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The first log record with this message and these fields; fails after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for record in self.log_records():
                if record.get("message") == message and all(
                    record.get(key) == value for key, value in fields.items()
                ):
                    return record
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no {message!r} log line with {fields} within {timeout_s} s; "
                    f"stderr:\n{self.stderr()[-4000:]}"
                )
            time.sleep(0.05)

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Send SIGTERM to the server process only; its exit code, or None if still running."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill_all(self) -> None:
        """Kill the server's whole process group (no-op when everything is gone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT_S)


def _environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without FRAUDSCORE_* settings, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FRAUDSCORE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_server(
    registry: Path | str,
    logs: Path,
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
) -> LiveServer:
    """Start ``fraudscore serve`` on a free port of 127.0.0.1 and wait until /readyz is 200.

    Fails the test (with the server's stderr) if the process exits or is not ready in time;
    the process is killed then.
    """
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stdout_path = logs / f"server-{port}.out"
    stderr_path = logs / f"server-{port}.err"
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--registry",
        str(registry),
    ]
    if workers != 1:
        command += ["--workers", str(workers)]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=_environment(env or {}),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    server = LiveServer(process, f"http://{HOST}:{port}", stdout_path, stderr_path)
    try:
        _wait_ready(server)
    except BaseException:
        server.kill_all()
        raise
    return server


def _wait_ready(server: LiveServer, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with http_client(server.base_url) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                pytest.fail(
                    f"the server exited with code {code} before it was ready; "
                    f"stdout:\n{server.stdout()}\nstderr:\n{server.stderr()[-4000:]}"
                )
            try:
                response = client.get("/readyz")
            except httpx2.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the server was not ready within {timeout_s} s (last: {last}); "
                    f"stderr:\n{server.stderr()[-4000:]}"
                )
            time.sleep(0.05)


@contextlib.contextmanager
def running_server(
    registry: Path | str,
    logs: Path,
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
) -> Iterator[LiveServer]:
    """A ready server, stopped (SIGTERM, then SIGKILL to its process group) on exit."""
    server = start_server(registry, logs, workers=workers, env=env)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.terminate()
        server.kill_all()

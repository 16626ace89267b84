"""Run the service under uvicorn: settings to the environment, one BLAS thread, JSON logs.

With several workers each process listens on its own ``SO_REUSEPORT`` socket, so the
kernel spreads connections over the workers. With one shared socket, as uvicorn's own
workers use, whichever worker wakes first accepts a whole burst of keep-alive
connections, and the others idle: measured here, two workers served batches no faster
than one.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from types import FrameType
from typing import Any

import uvicorn

from service.logs import configure_logging
from service.settings import Settings

APP = "service.main:app_from_environment"
# Read by OpenBLAS, MKL and OpenMP when numpy loads in each worker: one thread each.
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_UVICORN: dict[str, Any] = {
    "factory": True,
    "loop": "uvloop",
    "http": "httptools",
    "log_config": None,  # configure_logging sets up JSON lines
    "access_log": False,  # the app writes its own, with the request id
    "server_header": False,
    "timeout_graceful_shutdown": 10,
}
# A worker that dies sooner than this after starting stops the service instead of looping.
_MIN_UPTIME_S = 5.0
log = logging.getLogger("fraudscore.serve")


def environment_for(settings: Settings) -> dict[str, str]:
    """The ``FRAUDSCORE_*`` variables that make every worker read these settings."""
    out = {}
    for name, value in settings.model_dump().items():
        key = f"FRAUDSCORE_{name.upper()}"
        if name == "api_keys":
            out[key] = ",".join(secret.get_secret_value() for secret in settings.api_keys)
        elif name == "admin_token":
            token = settings.admin_token
            out[key] = "" if token is None else token.get_secret_value()
        elif value is not None:  # unset stays unset
            out[key] = str(value)
    return out


def run(settings: Settings) -> None:
    """Serve until interrupted, with ``settings.workers`` processes."""
    configure_logging(settings.log_level)
    # Workers build their app from the environment (see service.main.app_from_environment).
    os.environ.update(environment_for(settings))
    for name in _ONE_THREAD:
        os.environ.setdefault(name, "1")
    if settings.workers == 1 or not hasattr(socket, "SO_REUSEPORT"):
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the
        # handler it found; a no-op handler lets a requested stop end with exit status 0.
        previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
        try:
            uvicorn.run(
                APP, host=settings.host, port=settings.port, workers=settings.workers, **_UVICORN
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
        return
    _supervise(settings.workers, settings.host, _resolve_port(settings.host, settings.port))


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _resolve_port(host: str, port: int) -> int:
    """Port 0 means any free port: pick it once, so every worker binds the same one."""
    if port:
        return port
    with socket.socket(_family(host)) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _worker(host: str, port: int) -> None:
    """One worker process: its own listening socket in the port's reuse group."""
    sock = socket.socket(_family(host))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    uvicorn.Server(uvicorn.Config(APP, **_UVICORN)).run(sockets=[sock])


def _supervise(workers: int, host: str, port: int) -> None:
    """Start the workers, restart any that dies, stop them all on SIGINT or SIGTERM."""
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(host, port), name="fraudscore-worker")
        process.start()
        return process

    processes = [start() for _ in range(workers)]
    started = [time.monotonic()] * workers
    log.info("workers started", extra={"workers": workers, "host": host, "port": port})
    try:
        while not stopping:
            time.sleep(0.2)
            for i, process in enumerate(processes):
                if process.is_alive() or stopping:
                    continue
                if time.monotonic() - started[i] < _MIN_UPTIME_S:
                    # Dying right after start is a setup problem (port taken, bad settings):
                    # restarting would only repeat it.
                    raise SystemExit(
                        f"a worker exited with code {process.exitcode} within "
                        f"{_MIN_UPTIME_S:.0f} s of starting; see the log above"
                    )
                log.error(
                    "worker exited; restarting",
                    extra={"pid": process.pid, "exitcode": process.exitcode},
                )
                processes[i] = start()
                started[i] = time.monotonic()
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""Benchmark harness: the real server in a subprocess, interleaved ours/baseline rounds, ratios, targets.

Every figure is a ratio of ours (through the server) to a baseline measured in the same run, alternating
ours and baseline round by round, because these machines are shared and noisy. A calibration loop (a fixed
matmul) is timed before and after each phase so a noisy run is visible in the results.

Phase modules (`bench/phase_<name>.py`) expose `PHASE = "<name>"` and `run(h: Harness) -> None`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
TARGET_RE = re.compile(r"^\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+)\s*$")
CALIBRATION_SIZE = 256
CALIBRATION_ITERS = 500


@dataclass
class Stats:
    """Summary of repeated measurements: median, spread = (max - min) / median, p95, raw values."""

    values: list[float]
    median: float
    spread: float
    p95: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float] | tuple[float, ...]) -> Stats:
        vals = [float(v) for v in values]
        if not vals:
            raise ValueError("Stats.of needs at least one value")
        med = statistics.median(vals)
        lo, hi = min(vals), max(vals)
        spread = (hi - lo) / med if med else 0.0
        return cls(values=vals, median=med, spread=spread, p95=percentile(vals, 95), min=lo, max=hi)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], pct: float) -> float:
    """Linear-interpolated percentile (pct in 0..100) of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * pct / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def check_target(ratio: float | None, target: str | None) -> bool | None:
    """Whether `ratio` meets a target like "<=1.2" or ">=0.9"; None when there is no target or ratio."""
    if not target or ratio is None:
        return None
    m = TARGET_RE.match(target)
    if not m:
        raise ValueError(f"bad target {target!r}: use <=X, >=X, <X or >X")
    op, bound = m.group(1), float(m.group(2))
    return {"<=": ratio <= bound, ">=": ratio >= bound, "<": ratio < bound, ">": ratio > bound}[op]


def ratio_of(ours: Stats, baseline: Stats) -> float | None:
    """ours.median / baseline.median (None when the baseline median is zero)."""
    return ours.median / baseline.median if baseline.median else None


def calibrate(size: int = CALIBRATION_SIZE, iters: int = CALIBRATION_ITERS) -> float:
    """Seconds for a fixed matmul loop (~0.2 s on an idle core): a noise gauge, not a result."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    return time.perf_counter() - start


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_threads(worker: Callable[[Any], Any], args: list[Any]) -> float:
    """Seconds for `worker(arg)` to finish for every arg, each on its own thread, all started together."""
    threads = [threading.Thread(target=worker, args=(a,)) for a in args]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


class ServerError(RuntimeError):
    """The server did not start, died, or answered an error."""


class Server:
    """A running `python server.py` subprocess (use through `Harness.server()`)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, health_timeout: float) -> None:
        self.cmd = cmd
        self.env = env
        self.log_path = log_path
        self.health_timeout = health_timeout
        self.port = int(cmd[cmd.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None  # process start -> first /health 200
        self._client: httpx.Client | None = None

    # ----- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = started + self.health_timeout
        with httpx.Client(timeout=2.0) as probe:
            while True:
                if self.proc.poll() is not None:
                    raise ServerError(f"server exited with code {self.proc.returncode} before /health\n"
                                      + self.log_tail())
                try:
                    if probe.get(self.url + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() > deadline:
                    raise ServerError(f"/health not 200 within {self.health_timeout:.0f} s\n" + self.log_tail())
                time.sleep(0.01)
        self.startup_s = time.perf_counter() - started

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self._client is not None:
            self._client.close()
            self._client = None
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return f"--- server log ({self.log_path}) ---\n" + text[-chars:]

    # ----- measurements ------------------------------------------------------------------------
    def rss(self) -> int:
        """Resident memory in bytes of the server process and all its children."""
        if self.proc is None:
            return 0
        try:
            parent = psutil.Process(self.proc.pid)
            procs = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    @property
    def client(self) -> httpx.Client:
        """A keep-alive HTTP client on this server (as a real client would use)."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=600.0)
        return self._client

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; raise ServerError (with the body) unless the status is 2xx."""
        resp = self.client.request(method, path, **kwargs)
        if resp.status_code >= 300:
            raise ServerError(f"{method} {path} -> {resp.status_code}: {resp.text[:500]}")
        return resp

    def post(self, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        """POST and check the status (see `request`)."""
        return self.request("POST", path, json=json, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET and check the status (see `request`)."""
        return self.request("GET", path, **kwargs)

    def has_route(self, path: str, method: str = "post") -> bool:
        """Whether the server's OpenAPI schema lists `method path` (routers are filled in over time)."""
        try:
            paths = self.client.get("/openapi.json").json().get("paths", {})
        except (httpx.HTTPError, ValueError):
            return False
        return method.lower() in paths.get(path, {})

    def timed_post(self, path: str, json: Any = None, **kwargs: Any) -> float:
        """Seconds for one checked POST, the whole body read."""
        start = time.perf_counter()
        self.post(path, json=json, **kwargs)
        return time.perf_counter() - start


@dataclass
class Harness:
    """What a phase gets: servers, interleaved timing, result rows, calibration and run settings."""

    rounds: int = 5
    quick: bool = False
    threads: int = 1
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ur-bench-")))
    verbose: bool = True
    rows: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    phase: str = ""

    # ----- environment -------------------------------------------------------------------------
    def base_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for server subprocesses: offline, same thread count, outputs in a temp dir."""
        env = dict(os.environ)
        env.update({
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": str(self.threads),
            "UNIVERSAL_RUNTIME_TORCH_THREADS": str(self.threads),
            "UNIVERSAL_RUNTIME_OUTPUT_DIR": str(self.tmp / "outputs"),
            "PYTHONUNBUFFERED": "1",
        })
        env.update({k: str(v) for k, v in (extra or {}).items()})
        return env

    def apply_threads(self) -> None:
        """Give direct baselines in this process the same torch thread count as the server."""
        os.environ.setdefault("OMP_NUM_THREADS", str(self.threads))
        import torch

        torch.set_num_threads(self.threads)

    @contextlib.contextmanager
    def server(self, env: dict[str, str] | None = None, args: list[str] | None = None,
               health_timeout: float = 120.0) -> Iterator[Server]:
        """Start `python server.py --port PORT ...` and wait for /health 200; stop it on exit."""
        port = free_port()
        log_path = Path(tempfile.mkstemp(prefix="server-", suffix=".log", dir=self.tmp)[1])
        cmd = [sys.executable, "server.py", "--port", str(port), *(args or [])]
        srv = Server(cmd, self.base_env(env), log_path, health_timeout)
        try:
            srv.start()
            yield srv
        except BaseException:
            if self.verbose:
                print(srv.log_tail(), file=sys.stderr)
            raise
        finally:
            srv.stop()

    # ----- timing --------------------------------------------------------------------------------
    def interleave(self, ours: Callable[[], float], baseline: Callable[[], float], rounds: int | None = None,
                   warmup: bool = True) -> tuple[Stats, Stats]:
        """Alternate ours/baseline (ABAB...) after one warm-up call each; each call returns one measurement."""
        n = max(1, rounds if rounds is not None else self.rounds)
        if warmup:
            ours()
            baseline()
        a: list[float] = []
        b: list[float] = []
        for _ in range(n):
            a.append(float(ours()))
            b.append(float(baseline()))
        return Stats.of(a), Stats.of(b)

    def calibrate(self) -> float:
        """Seconds for the fixed calibration loop, with this run's thread count."""
        self.apply_threads()
        return calibrate()

    # ----- results -------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.verbose:
            print(f"[{self.phase or 'bench'}] {message}", flush=True)

    def result(self, metric: str, ours: Stats, baseline: Stats, unit: str = "s", higher_is_better: bool = False,
               target: str | None = None, note: str = "", added_at_most: float | None = None,
               **extra: Any) -> dict[str, Any]:
        """Record one row: ratio = ours.median / baseline.median, checked against `target` (on the ratio).

        `added_at_most` (in `unit`) also passes the row when ours.median - baseline.median is at most that,
        for targets like "<= 1.5x or <= 3 ms added".
        """
        ratio = ratio_of(ours, baseline)
        added = ours.median - baseline.median
        met = check_target(ratio, target)
        if met is False and added_at_most is not None and added <= added_at_most:
            met = True
        row: dict[str, Any] = {
            "phase": self.phase, "metric": metric, "unit": unit, "status": "ok",
            "ours": ours.to_dict(), "baseline": baseline.to_dict(), "ratio": ratio, "added": added,
            "target": target, "added_at_most": added_at_most, "met": met,
            "higher_is_better": higher_is_better, "note": note,
        }
        row.update(extra)
        self.rows.append(row)
        mark = {True: "ok", False: "MISSED", None: ""}[met]
        ratio_txt = f"{ratio:.3f}x" if ratio is not None else "n/a"
        self.log(f"{metric}: ours {fmt_value(ours.median, unit)} (spread {ours.spread:.0%}) vs baseline "
                 f"{fmt_value(baseline.median, unit)} (spread {baseline.spread:.0%}) -> {ratio_txt}"
                 f"{' target ' + target if target else ''} {mark}".rstrip())
        return row

    def skip(self, metric: str, reason: str) -> dict[str, Any]:
        """Record a row for a measurement that could not run here (and why)."""
        row = {"phase": self.phase, "metric": metric, "status": "skipped", "note": reason, "met": None}
        self.rows.append(row)
        self.log(f"{metric}: skipped ({reason})")
        return row

    def fail(self, error: str, metric: str = "(phase failed)") -> dict[str, Any]:
        """Record a failed phase or measurement."""
        row = {"phase": self.phase, "metric": metric, "status": "failed", "error": error, "note": error,
               "met": False}
        self.rows.append(row)
        self.log(f"{metric}: FAILED: {error}")
        return row


def fmt_value(value: float | None, unit: str) -> str:
    """Human form of a value: seconds shown as ms below 1 s, bytes as MiB."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit in ("B", "bytes"):
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.3g} {unit}".strip()


def machine_info() -> dict[str, Any]:
    """Facts that make results comparable: CPU count, platform, library versions, date."""
    import torch

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "memory_total": psutil.virtual_memory().total,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    for name in ("transformers", "diffusers", "sentence-transformers"):
        with contextlib.suppress(Exception):
            info[name] = importlib.metadata.version(name)
    return info

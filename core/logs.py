"""Logging: the request id on every line, text or JSON format."""

from __future__ import annotations

import contextvars
import json
import logging
import time

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (from the current request's context) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


#: Libraries that give their root logger a stderr handler of their own and turn propagation off. Their records
#: are routed through ours instead, so every line has our format (one JSON object per line with
#: `--log-format json`) and the request id, whatever a library release starts to log.
LIBRARY_LOGGERS = ("transformers", "diffusers", "huggingface_hub")


class RoutedLogger(logging.Logger):
    """A library's root logger that keeps no handler of its own and always propagates to the root logger.

    Installed before the library is imported (it then finds this logger under its name) or converted in place
    after, so the library's own set-up (`addHandler`, `propagate = False`) has no effect; its level stays."""

    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802 - logging's own name
        return None

    @property  # type: ignore[override]
    def propagate(self) -> bool:
        return True

    @propagate.setter
    def propagate(self, value: bool) -> None:
        return None


def route_library_logs(names: tuple[str, ...] = LIBRARY_LOGGERS) -> None:
    """Send the named libraries' log records, and Python warnings, through the root logger's handler."""
    manager = logging.Logger.manager
    for name in names:
        existing = manager.loggerDict.get(name)
        if isinstance(existing, logging.Logger):
            existing.handlers.clear()
            existing.__class__ = RoutedLogger
            continue
        previous, manager.loggerClass = manager.loggerClass, RoutedLogger
        try:
            logging.getLogger(name)
        finally:
            manager.loggerClass = previous
    logging.captureWarnings(True)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root and uvicorn loggers once, and route third-party libraries' logs through them."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    route_library_logs()

"""Logging: one loguru sink on stderr, text or JSON lines, stdlib routed in (SPEC §7)."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import msgspec
from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

LEVELS = ("trace", "debug", "info", "success", "warning", "error", "critical")
FORMATS = ("auto", "text", "json")

_json = msgspec.json.Encoder()


def _json_sink(message: Message) -> None:
    record = message.record
    line: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name.lower(),
        "message": record["message"],
        "logger": record["name"],
    }
    for key, value in record["extra"].items():
        if key == "_text":
            continue
        line[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
    if record["exception"] is not None:
        exc = record["exception"]
        line["error"] = f"{exc.type.__name__ if exc.type else 'Exception'}: {exc.value}"
    sys.stderr.write(_json.encode(line).decode() + "\n")


def _text_format(record: Any) -> str:
    extra = record["extra"]
    pairs = " ".join(f"{k}={v}" for k, v in extra.items() if k != "_text")
    extra["_text"] = f" {pairs}" if pairs else ""
    return (
        "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        "{message}<dim>{extra[_text]}</dim>\n{exception}"
    )


class _InterceptHandler(logging.Handler):
    """Routes stdlib logging (grpclib, kubernetes-asyncio, aiohttp) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).bind(logger=record.name).log(
            level, record.getMessage()
        )


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Install the single stderr sink; ``auto`` means JSON unless stderr is a TTY."""
    logger.remove()
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    if use_json:
        logger.add(_json_sink, level=level.upper(), backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level.upper(),
            format=_text_format,
            colorize=sys.stderr.isatty(),
            backtrace=False,
            diagnose=False,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    for noisy in ("grpclib", "aiohttp.access", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

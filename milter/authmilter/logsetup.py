"""Where log lines go: stderr (journald under systemd) or syslog. Called at start-up and again on reload."""

from __future__ import annotations

import logging
import logging.handlers
import socket
import sys

from authmilter.config import LogSection, LogTarget

LOGGER_NAME = "authmilter"
SYSLOG_SOCKET = "/dev/log"

# journald and syslog stamp time and process themselves; a second timestamp would only add noise.
STDERR_FORMAT = "%(levelname)s %(message)s"
SYSLOG_FORMAT = "authmilter[%(process)d]: %(levelname)s %(message)s"

_OUR_HANDLER_FLAG = "_authmilter_handler"


def configure(section: LogSection, *, stream=None) -> logging.Logger:
    """(Re)configure the "authmilter" logger from a [log] section; returns it.

    Only handlers we installed are replaced, so a test harness's own handlers survive a reload.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(section.level.value.upper())
    logger.propagate = False
    for old in [h for h in logger.handlers if getattr(h, _OUR_HANDLER_FLAG, False)]:
        logger.removeHandler(old)
        old.close()
    handler, problem = _make_handler(section, stream)
    setattr(handler, _OUR_HANDLER_FLAG, True)
    logger.addHandler(handler)
    if problem:
        logger.warning("%s; logging to stderr instead", problem)
    return logger


def _make_handler(section: LogSection, stream) -> tuple[logging.Handler, str]:
    if section.target is LogTarget.SYSLOG:
        try:
            # SysLogHandler accepts a missing socket silently and then fails on every line; find out now.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                probe.connect(SYSLOG_SOCKET)
            handler = logging.handlers.SysLogHandler(
                address=SYSLOG_SOCKET,
                facility=logging.handlers.SysLogHandler.facility_names[section.syslog_facility])
        except OSError as exc:
            problem = f"cannot open syslog socket {SYSLOG_SOCKET}: {exc.strerror or exc}"
        else:
            handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
            return handler, ""
    else:
        problem = ""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    return handler, problem

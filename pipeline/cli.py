"""What every entry point (python -m pipeline, pipeline.data, pipeline.llm, pipeline.config,
pipeline.lookup, pipeline.audit, pipeline.sweep) shares: argparse, and how a user's mistake ends.

A user's mistake (bad data, a bad setting or override, a missing input, an unknown revision) is
raised as ValueError or FileNotFoundError (ContractError, LookupFailed, AuditError, RevisionError are
ValueErrors), or by Hydra for an override it cannot compose; each message already names the file,
key and value. It ends as one line on stderr and exit status 1 (argparse's usage errors exit 2).
Anything else is our bug and keeps its traceback; PIPELINE_DEBUG=1 shows the traceback of a
user's mistake too.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

DEBUG = "PIPELINE_DEBUG"


def parser(prog: str, doc: str, **kwargs) -> argparse.ArgumentParser:
    """An argument parser whose --help shows the module's docstring: its first line as the
    description, the rest (usage examples) as the epilog, kept as written."""
    first, _, rest = doc.strip().partition("\n")
    return argparse.ArgumentParser(prog=prog, description=first, epilog=rest.strip() or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


# The libraries' own deprecation warnings are silenced around the calls that meet them
# (pipeline/llm/transformers_internals.py), in a stage and in a test alike.
LIGHTNING_LOG = "lightning.pytorch.utilities.rank_zero"  # where Lightning's rank-zero info lines are logged


class _NoAdvert(logging.Filter):
    """Drops Lightning's litlogger advertisement (an info line on every Trainer); its other info
    lines (devices found, checkpoints) stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_third_party() -> None:
    """Set once in an entry point that trains or decodes, before the libraries are used."""
    log = logging.getLogger(LIGHTNING_LOG)
    if not any(isinstance(f, _NoAdvert) for f in log.filters):
        log.addFilter(_NoAdvert())


def _user_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException

    return ValueError, FileNotFoundError, HydraException


# What the machine, not the code, refuses: a full disk, a read-only or forbidden folder. The
# writes are atomic (files.atomic_path), so the outputs there before are intact.
MACHINE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the filesystem is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "operation not permitted", errno.EIO: "an input/output error"}
# A one-line error longer than this is cut in its middle: its head names the file and key, its tail what to do.
LONGEST = 400


def one_line(text: str) -> str:
    """Hydra and DVC messages can span lines, and some name a whole setting: the user gets one
    readable line."""
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(line) > LONGEST:
        line = f"{line[:LONGEST * 2 // 3]} ... {line[-LONGEST // 3:]}"
    return line


class Terminated(BaseException):
    """SIGTERM, raised where the process is (terminated() installs it): it unwinds like Ctrl-C, so
    no half-written output is moved into place."""


@contextmanager
def terminated() -> Iterator[None]:
    """Inside the block, SIGTERM raises Terminated (user_errors ends it in one line, status 143)."""
    def stop(signum, frame):
        raise Terminated()

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turn a user's mistake raised inside the block into `prog: message` and exit status 1; a full
    disk or a forbidden folder likewise (the outputs before are kept); Ctrl-C into one line and
    exit status 130, SIGTERM (under terminated()) into one line and 143."""
    try:
        yield
    except (KeyboardInterrupt, Terminated) as stop:
        if os.environ.get(DEBUG):
            raise
        how, status = ("terminated (SIGTERM)", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
        print(f"{prog}: {how}; the outputs it had not finished were not written, the earlier ones are "
              "intact; rerun to resume", file=sys.stderr)
        raise SystemExit(status) from None
    except Exception as exc:
        if os.environ.get(DEBUG):
            raise
        if isinstance(exc, OSError) and exc.errno in MACHINE:
            where = f"{exc.filename}: " if exc.filename else ""
            raise SystemExit(f"{prog}: {where}{MACHINE[exc.errno]} ({exc.strerror or exc}); nothing was "
                             "replaced, the earlier outputs are intact: free or fix it, then rerun") from None
        if not isinstance(exc, _user_errors()):
            raise
        text = str(exc)
        if exc.__cause__ is not None and type(exc).__module__.startswith("hydra"):
            # Hydra names the override; the first line of its cause (OmegaConf's type or enum
            # check) says what is allowed.
            text += ": " + str(exc.__cause__).splitlines()[0]
        raise SystemExit(f"{prog}: {one_line(text) or type(exc).__name__}") from None

"""The time model (DESIGN.md section 4): which days each stage may read."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from omegaconf import DictConfig


@dataclass(frozen=True)
class Windows:
    month_start: date  # first day of period.month: nothing on or after it trains the adapter
    month_end: date  # first day of the next month
    train_start: date  # fine-tuning samples come from [train_start, test_start)
    test_start: date  # the gate's held-out days are [test_start, month_start)


def windows(cfg: DictConfig) -> Windows:
    month = cfg.period.month
    if not month:
        raise ValueError("params.yaml: period.month is not set (give period.month=YYYY-MM)")
    try:
        start = date.fromisoformat(f"{month}-01")
    except ValueError as exc:
        raise ValueError(f"params.yaml: period.month is {month!r}, expected YYYY-MM") from exc
    end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    ft = cfg.finetune
    if not 0 < int(ft.test_days) < int(ft.train_days):
        raise ValueError(f"params.yaml: finetune.test_days={ft.test_days} must be in 1..train_days-1 "
                         f"(train_days={ft.train_days})")
    return Windows(month_start=start, month_end=end, train_start=start - timedelta(days=int(ft.train_days)),
                   test_start=start - timedelta(days=int(ft.test_days)))


def refresh_dates(cfg: DictConfig) -> list[date]:
    """RAG refresh dates: the month's first day, then every refresh.every_days, up to refresh.until."""
    w = windows(cfg)
    every = int(cfg.refresh.every_days)
    last = date.fromisoformat(str(cfg.refresh.until)) if cfg.refresh.until else w.month_end - timedelta(days=1)
    if every < 1 or not w.month_start <= last < w.month_end:
        raise ValueError(f"params.yaml: refresh.every_days={every} must be >= 1 and refresh.until={last} inside "
                         f"{cfg.period.month}")
    return [w.month_start + timedelta(days=k) for k in range(0, (last - w.month_start).days + 1, every)]

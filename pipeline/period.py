"""The time model (docs/design.md, "Time"): which days each stage may read."""
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
    """The month's days and the training window before it (pipeline/schema.py checks the settings)."""
    if not cfg.period.month:
        raise ValueError("params.yaml: period.month is not set (give period.month=YYYY-MM)")
    start = date.fromisoformat(f"{cfg.period.month}-01")
    end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    ft = cfg.finetune
    return Windows(month_start=start, month_end=end, train_start=start - timedelta(days=ft.train_days),
                   test_start=start - timedelta(days=ft.test_days))


def refresh_dates(cfg: DictConfig) -> list[date]:
    """RAG refresh dates: the month's first day, then every refresh.every_days, up to refresh.until."""
    w = windows(cfg)
    last = date.fromisoformat(cfg.refresh.until) if cfg.refresh.until else w.month_end - timedelta(days=1)
    return [w.month_start + timedelta(days=k) for k in range(0, (last - w.month_start).days + 1, cfg.refresh.every_days)]

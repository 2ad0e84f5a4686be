"""``fit`` callbacks: ``callback(event, metrics)`` with event ``"step"`` or ``"epoch"``."""

from __future__ import annotations

import logging

__all__ = ["LoggingCallback"]


class LoggingCallback:
    """Logs step and epoch metrics through :mod:`logging` (replayed events are skipped).

    Args:
        logger: where to log; default ``geogfm.training``.
        level: the log level.
        events: which events to log.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        level: int = logging.INFO,
        events: tuple[str, ...] = ("step", "epoch"),
    ):
        self.logger = logger or logging.getLogger("geogfm.training")
        self.level, self.events = level, events

    def __call__(self, event: str, metrics: dict) -> None:  # noqa: D102
        if metrics.get("replayed") or event not in self.events:
            return
        text = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
        )
        self.logger.log(self.level, "%s: %s", event, text)

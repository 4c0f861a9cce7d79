"""Store health as an operator reads it: one error line when a store stops answering, one line
when it answers again, and nothing in between but debug lines."""

from __future__ import annotations

import logging

__all__ = ["StoreHealth"]


class StoreHealth:
    """Tells the log when a store fails and when it answers again, once each.

    Args:
        logger: Where the lines go.

    Attributes:
        failing: True from a failure until the next answer.
    """

    __slots__ = ("failing", "logger")

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
        self.logger = logger
        self.failing = False

    def failed(self, message: str, *args: object) -> bool:
        """Log `message`: an error if the store answered until now, else debug; True if so."""
        if self.failing:
            self.logger.debug(message, *args)
            return False
        self.failing = True
        self.logger.error(message, *args)
        return True

    def answered(self, message: str, *args: object) -> None:
        """Log `message` if the store was failing: it answers again."""
        if self.failing:
            self.failing = False
            self.logger.info(message, *args)

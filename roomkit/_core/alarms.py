"""A room's alarm: what ``on_alarm`` is told, and what a failed run of it leads to.
Pure, no I/O.

A run of ``on_alarm`` that raises has its writes rolled back, the alarm deletion
included; :func:`after_failure` then decides what is written instead: the same alarm
again after an exponential back-off (2, 4, ... 64 s, plus up to a quarter more, so
that rooms failing together do not retry in the same instant), or, once it has failed
``MAX_RETRIES`` retries, no alarm at all.
"""

from __future__ import annotations

from typing import Final

import attrs

from ..storage._changes import AlarmWrite

__all__ = ["MAX_RETRIES", "AlarmInfo", "after_failure", "retry_delay"]

#: How often a failing ``on_alarm`` is retried before the alarm is dropped.
MAX_RETRIES: Final = 6
#: Seconds before the first retry; each later one waits twice as long (2, 4, ... 64 s).
FIRST_RETRY_DELAY: Final = 2.0
#: Up to this fraction is added to each retry delay, so that rooms failing together
#: (say, on a shared outage) do not all retry in the same instant.
RETRY_JITTER: Final = 0.25


@attrs.frozen
class AlarmInfo:
    """What ``on_alarm`` is told about the alarm it handles.

    Attributes:
      retry_count: how many times this alarm was retried after ``on_alarm`` raised; 0 on
        the first run.
    """

    retry_count: int = 0

    @property
    def is_retry(self) -> bool:
        """Whether an earlier run of ``on_alarm`` for this alarm raised."""
        return self.retry_count > 0


def retry_delay(retry: int, jitter: float) -> float:
    """Seconds before retry number ``retry`` (1-based), given ``jitter`` in [0, 1)."""
    return FIRST_RETRY_DELAY * 2.0 ** (retry - 1) * (1 + RETRY_JITTER * jitter)


def after_failure(retry: int, now: float, jitter: float) -> AlarmWrite:
    """The alarm to store once run number ``retry`` (0 for the first) raised.

    Args:
      retry: how many runs of this alarm failed before this one.
      now: the wall-clock time alarms are stored in (seconds since the epoch).
      jitter: a number in [0, 1) that spreads the retry.

    Returns:
      The alarm due after the back-off, carrying its retry number; or a deletion
      (``due`` None) once the alarm has been retried ``MAX_RETRIES`` times.
    """
    retry += 1
    if retry > MAX_RETRIES:
        return AlarmWrite(None)
    return AlarmWrite(now + retry_delay(retry, jitter), retry)

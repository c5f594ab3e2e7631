"""Is a signal's time sane *now*? Judged against the agent's injected clock when the signal arrives.

The schemas (agent/signals/models.py) bound times to 2000..2100 without a clock; this is the check that needs one,
so `vpp-agent simulate`, the accelerated demo and `--signals` replays judge signals against their own time. One
rule per question:
- nothing may come from the future beyond `[signals] clock_skew_s` (a reading dated 2099 would otherwise count as
  newer than every later one);
- an event, award or price series that has already ended covers nothing from now on;
- nothing may start more than `[signals] horizon_days` ahead.
How old an activation or frequency reading may be depends on its product and is the event manager's rule
(agent/events/lifecycle.py `admit`).

A gateway that boots with its clock at 1970 (no RTC, no NTP yet) would judge everything wrongly in either direction,
so signal handling waits until `clock_is_sane` (the agent reports itself degraded meanwhile).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.config import SignalSettings
from agent.signals.models import AsActivation, GridFrequency, SignalModel

# Earlier than this the clock is unset, not merely off: no signal of this agent's era can be judged against it.
SANE_CLOCK_FROM = datetime(2025, 1, 1, tzinfo=UTC)


def clock_is_sane(now: datetime) -> bool:
    return now >= SANE_CLOCK_FROM


def time_problem(signal: SignalModel, now: datetime, settings: SignalSettings) -> str | None:
    """Why `signal` makes no sense at `now`, or None."""
    skew = timedelta(seconds=settings.clock_skew_s)
    if isinstance(signal, AsActivation | GridFrequency):
        if signal.at > now + skew:
            ahead = (signal.at - now).total_seconds()
            allowed = settings.clock_skew_s
            return f"at {signal.at.isoformat()} is {ahead:.0f} s ahead of the agent's clock (allowed: {allowed:g} s)"
        return None
    end = signal.ends_at()
    if end is not None and end <= now:
        return f"ended at {end.isoformat()}, before the agent's clock ({now.isoformat()})"
    start = signal.starts_at()
    if start is not None and start > now + timedelta(days=settings.horizon_days):
        return f"starts {start.isoformat()}, more than {settings.horizon_days:g} days ahead"
    return None

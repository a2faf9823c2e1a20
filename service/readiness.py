"""What a dependency reports to `/health/ready`: its own words, from what it already knows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec


class Check(msgspec.Struct, omit_defaults=True):
    status: Literal["ok", "failing"]
    detail: str | None = None


# A dependency's readiness, answered from what it already knows: no upstream call per probe.
ReadinessProbe = Callable[[], Awaitable[Check]]

"""The show's load shape, kept apart from the users so a run without it is just `-f load/locustfile.py`:

    locust -f load/locustfile.py,load/shape.py --headless --host ...

Phases (seconds from start; knobs are environment variables so master and workers agree):
- 0 .. SALE_OPEN: the host plus viewers ramping to LIVESALE_SHAPE_VIEWERS at LIVESALE_SHAPE_RAMP/s;
- SALE_OPEN .. +SPIKE: the sale opens (the host's --sale-open-after should match
  LIVESALE_SHAPE_SALE_OPEN) and buyers arrive at once, LIVESALE_SHAPE_BUYERS of them at
  LIVESALE_SHAPE_SPIKE_RATE/s: the "3-second buying rush";
- until LIVESALE_SHAPE_DURATION: everyone stays; then the test stops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from locust import LoadTestShape


@dataclass(frozen=True)
class ShowPlan:
    viewers: int = 200
    buyers: int = 100
    ramp_rate: float = 20.0
    sale_open: float = 15.0
    spike_rate: float = 50.0
    duration: float = 60.0

    @classmethod
    def from_env(cls) -> ShowPlan:
        e = os.environ.get
        return cls(int(e("LIVESALE_SHAPE_VIEWERS", cls.viewers)), int(e("LIVESALE_SHAPE_BUYERS", cls.buyers)),
                   float(e("LIVESALE_SHAPE_RAMP", cls.ramp_rate)), float(e("LIVESALE_SHAPE_SALE_OPEN", cls.sale_open)),
                   float(e("LIVESALE_SHAPE_SPIKE_RATE", cls.spike_rate)),
                   float(e("LIVESALE_SHAPE_DURATION", cls.duration)))

    def at(self, t: float) -> tuple[int, float, str] | None:
        """Target (users, spawn rate, phase) at time t; None once the show is over."""
        if t >= self.duration:
            return None
        if t < self.sale_open:
            return 1 + self.viewers, self.ramp_rate, "ramp"
        return 1 + self.viewers + self.buyers, self.spike_rate, "sale"


class ShowShape(LoadTestShape):
    plan = ShowPlan.from_env()

    def tick(self) -> tuple[int, float, list[type]] | None:
        step = self.plan.at(self.get_run_time())
        if step is None:
            return None
        users, rate, phase = step
        # The user classes come from the runner: importing the locustfile here would load a second copy
        # of it (Locust imports `-f` files by path). Weights follow the plan, so the dispatcher's split
        # of the users is the plan's split.
        assert self.runner is not None
        by_name = {c.__name__: c for c in self.runner.environment.user_classes}
        by_name["ViewerUser"].weight = max(1, self.plan.viewers)
        by_name["BuyerUser"].weight = max(1, self.plan.buyers)
        names = ["HostUser", "ViewerUser"] + (["BuyerUser"] if phase == "sale" else [])
        return users, rate, [by_name[n] for n in names]

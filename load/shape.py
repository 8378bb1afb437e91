"""The show's load shape, kept apart from the users so a run without it is just `-f load/locustfile.py`:

    locust -f load/locustfile.py,load/shape.py --headless --host ...

Phases (seconds from start; knobs are environment variables so master and workers agree):
- 0 .. SALE_OPEN: the host plus viewers ramping to LIVESALE_SHAPE_VIEWERS at LIVESALE_SHAPE_RAMP/s;
- SALE_OPEN .. +SPIKE: the sale opens (the host's --sale-open-after should match
  LIVESALE_SHAPE_SALE_OPEN) and buyers arrive at once, LIVESALE_SHAPE_BUYERS of them at
  LIVESALE_SHAPE_SPIKE_RATE/s: the "3-second buying rush";
- until LIVESALE_SHAPE_DURATION: everyone stays; then LIVESALE_SHAPE_DRAIN (8) seconds at 0 users,
  so users finish their task and workers report their last numbers; then the test stops.
"""

from __future__ import annotations

from typing import Any

from locust import LoadTestShape, events

from load.wire import ShowPlan

PLAN = ShowPlan.from_env()


@events.init.add_listener
def _counts(environment: Any, **_: Any) -> None:
    """Viewers get a fixed count and buyers stay the only weighted class: the ramp stage is filled by
    fixed-count users (host + viewers) and every user the sale stage adds is a buyer. (With weights for
    both, Locust's dispatcher splits the *added* users by ratio, adding viewers too; with both fixed,
    it does not revisit fixed counts after the first stage.) The classes come from the environment:
    importing the locustfile here would load a second copy of it (Locust imports `-f` files by path)."""
    by_name = {c.__name__: c for c in environment.user_classes}
    if "ViewerUser" in by_name:
        by_name["ViewerUser"].fixed_count = PLAN.viewers


class ShowShape(LoadTestShape):
    plan = PLAN

    def tick(self) -> tuple[int, float, list[type]] | None:
        step = self.plan.at(self.get_run_time())
        if step is None:
            return None
        users, rate, phase = step
        assert self.runner is not None
        by_name = {c.__name__: c for c in self.runner.environment.user_classes}
        names = ["HostUser", "ViewerUser"] + (["BuyerUser"] if phase != "ramp" else [])
        return users, rate, [by_name[n] for n in names]

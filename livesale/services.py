"""What every request handler and background task of a process shares."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from livesale.auth import Verifier
from livesale.bus import Bus
from livesale.config import Settings


@dataclass
class Services:
    settings: Settings
    redis: aioredis.Redis
    db: AsyncEngine
    auth: Verifier
    bus: Bus


SERVICES = web.AppKey("livesale_services", Services)

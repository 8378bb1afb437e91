"""Load testing: Locust file, asyncio viewer swarm, oversell verifier, `make load` show (see load/README.md)."""

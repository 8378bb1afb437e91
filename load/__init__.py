"""Load generators: Locust scenarios, the asyncio viewer swarm, the oversell verifier."""

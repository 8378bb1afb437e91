"""Prometheus metrics (one module defines them all), `/metrics`, Grafana dashboard and alert rules.
Imports nothing of ours."""

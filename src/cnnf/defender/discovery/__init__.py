"""Workload discovery: containers through the Docker Engine API, and the host."""

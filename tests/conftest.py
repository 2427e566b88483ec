"""Shared pytest configuration: fixture plugins live in tests/fixtures/."""

pytest_plugins: list[str] = [
    "fixtures.controlplane",
    "fixtures.mockslurm",
    "fixtures.operator",
    "fixtures.realslurm",
]

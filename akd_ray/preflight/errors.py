"""What a preflight check raises, and how it names the field."""

from __future__ import annotations

from akd_ray.config import ConfigError, Study


class PreflightError(ConfigError):
    """Something a study points to (data, models, storage, MLflow, resources) is not usable."""


def field_of(study: Study, field_: str) -> str:
    """`<study file>: <field>`, the start of every preflight message about a field."""
    return f"{study.source}: {field_}"

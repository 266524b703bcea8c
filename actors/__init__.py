"""The entity's actors; each module holds one."""

from .health import HealthActor

__all__ = ["HealthActor"]

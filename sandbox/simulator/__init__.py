"""The iTwin Platform simulator's parts; `sandbox.itwin_platform` is the documented entry point."""

from .core import DEFAULT_RATE_LIMITS, Simulator
from .events import DeliveryAttempt
from .faults import Faults
from .protocol import Headers, RecordedRequest

__all__ = ["DEFAULT_RATE_LIMITS", "DeliveryAttempt", "Faults", "Headers", "RecordedRequest", "Simulator"]

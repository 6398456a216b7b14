"""Model health on live traffic (DeepInsight online, docs/insight.md): request sampling, windows of
hidden-layer statistics merged across workers, alarms, and the guarded swap."""

from .alarms import Rules, Webhook
from .gate import Decision, GateConfig, evaluate
from .monitor import HealthMonitor
from .store import WindowStore

__all__ = ["Decision", "GateConfig", "HealthMonitor", "Rules", "WindowStore", "Webhook", "evaluate"]

"""The chart's values the chart tests render it with: every feature that adds objects is on in one."""

from __future__ import annotations

RENDERINGS = {
    "defaults": {},
    "monitors-and-dashboards": {
        "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "dashboards": {"enabled": True},
    },
    "namespaced": {"operator": {"clusterWide": False}, "metrics": {"podMonitor": {"enabled": True}}},
}

"""Cluster monitor: link bandwidth and RTT estimates (probes plus passive transfer figures).

The failure detector lives in the membership state machine (heartbeat reachability).
"""

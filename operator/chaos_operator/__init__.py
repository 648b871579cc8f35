"""The Kopf operator for ChaosTrainingJob: the advisory control plane.

It turns a job into pods, services and RBAC, carries out the size the group agreed on within
the job's bounds and reports status; the sidecars decide membership without it. See
docs/operator.md.
"""

"""The Kopf operator for ChaosTrainingJob (advisory control plane, DESIGN §4).

Layout reserved by the foundation; the operator itself is issue 8.
"""

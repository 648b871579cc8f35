"""The lab, not the product: the local harness (``chaos-train local``), churn scripts, job
reports, network namespaces and the benchmarks (``chaos-train bench``, ``chaos-train sim``).

The product packages (``chaos_sidecar``, ``chaos_train``, ``chaos_operator``) never import
it, and the container images do not contain it.
"""

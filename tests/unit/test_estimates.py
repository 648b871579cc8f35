from chaos_sidecar.monitor.estimates import (
    MIN_REQUEST_OVERHEAD_S,
    UNMEASURED_BANDWIDTH_BPS,
    UNMEASURED_REQUEST_OVERHEAD_S,
    EstimateTable,
)


def test_unmeasured_link_gets_the_named_defaults():
    table = EstimateTable()
    assert table.bandwidth("n1") == UNMEASURED_BANDWIDTH_BPS
    assert table.request_overhead_s("n1") == UNMEASURED_REQUEST_OVERHEAD_S


def test_request_overhead_is_the_lowest_round_trip_not_the_queued_one():
    table = EstimateTable()
    for rtt in (0.004, 0.180, 0.250):  # later probes queued behind gradients
        table.observe_rtt("n1", rtt)
    assert table.request_overhead_s("n1") == 0.004
    assert table.links["n1"].rtt_s > 0.1  # the smoothed figure (metrics) still shows the queue


def test_request_overhead_has_a_floor():
    table = EstimateTable()
    table.observe_rtt("n1", 0.00001)
    assert table.request_overhead_s("n1") == MIN_REQUEST_OVERHEAD_S


def test_bandwidth_is_smoothed():
    table = EstimateTable(alpha=0.5)
    table.observe_bandwidth("n1", 100.0)
    table.observe_bandwidth("n1", 200.0)
    assert table.bandwidth("n1") == 150.0
    assert table.links["n1"].samples == 2

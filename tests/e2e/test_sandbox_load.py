"""The sandbox under load: 1,000 requests at concurrency 32 against a service that holds 10 at
once, a third of them hostile (fork bombs, memory bombs, endless loops, endless output).

Every request is answered (the 429s of back-pressure retried), each with its program's expected
output or verdict; the service's own memory stays flat; nothing is left running afterwards.
"""

from longrl.sandbox.load import PROGRAMS, run_load


def test_1000_requests_at_concurrency_32_all_answered_memory_flat_nothing_left():
    report = run_load(None, requests=1000, concurrency=32, workers=2, queue=8)
    assert report.failures == []
    assert report.answered == 1000 and report.unanswered == 0 and report.wrong == 0
    assert report.rejected_429 > 0  # 32 at once against room for 10: back-pressure was exercised
    assert set(report.verdicts) == set(PROGRAMS)  # every kind of program was sent
    assert report.leftovers == []
    # the service's footprint: measured ~82 MB at start and ~85 MB at peak for 100 or 1,000 requests
    assert report.service_rss_mb_peak - report.service_rss_mb_start < 100, report

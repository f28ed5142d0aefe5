"""Load smoke test: mixed chat / embeddings / vision requests from 32 concurrent clients against a real server
process on loopback with tiny models; zero failures (429 with Retry-After is the only accepted refusal) and
resident memory flat after warm-up. The full 2000-request run is the bench phase `load` (bench/phase_load.py),
which uses the same driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.phase_load import CLIENTS, drive, mixed_requests, settle_rss
from tests.hardening import metric, server_process

TOTAL = 480


def test_mixed_load_from_32_clients_has_no_failures_and_flat_memory(tmp_path: Path, tiny_lm: Any,
                                                                     tiny_st_folder: Path, tiny_vit: Path) -> None:
    plan = mixed_requests(TOTAL, str(tiny_lm.path), str(tiny_st_folder), str(tiny_vit))
    with server_process(tmp_path, shutdown_timeout=10) as srv:
        warm = drive(srv.url, plan[:160])
        rss_warm = settle_rss(srv, 0.5)
        report = drive(srv.url, plan)
        rss_after = settle_rss(srv, 0.5)
        metrics = srv.client.get("/metrics").text
    assert warm.failures == [] and report.failures == [], (warm.failures + report.failures)[:5]
    assert report.missing_retry_after == 0
    assert report.total == TOTAL
    ok = sum(v for k, v in report.statuses.items() if k.endswith(" 200"))
    assert ok >= TOTAL * 0.9, report.summary()  # 429s are allowed but must stay the exception
    assert {k.split()[0] for k in report.statuses} == {"chat", "embeddings", "vision"}
    assert metric(metrics, "universal_runtime_model_loads_total") == 3  # each model loaded once
    assert rss_after <= rss_warm * 1.10, f"RSS {rss_warm / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB"
    print(f"\n{CLIENTS} clients: {report.summary()}; RSS warm {rss_warm / 2**20:.0f} MiB, "
          f"after {rss_after / 2**20:.0f} MiB")

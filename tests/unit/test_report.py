"""Reports: the token-efficiency table and plot, and a run's report.html from metrics.jsonl."""

import json

import pytest

from longrl.evaluate import EfficiencyRow
from longrl.report import efficiency_table, metric_series, write_efficiency_report, write_run_report

ROWS = [EfficiencyRow("long", 0.8125, 71.25), EfficiencyRow("short", 0.5, 40.0)]


def test_efficiency_table_rows():
    assert efficiency_table(ROWS).splitlines() == [
        "| model | pass@1 (%) | mean tokens |",
        "|---|---|---|",
        "| long | 81.2 | 71.2 |",  # 81.25 and 71.25 round half to even
        "| short | 50.0 | 40.0 |",
    ]


def test_efficiency_report_writes_png_table_and_json(tmp_path):
    paths = write_efficiency_report(ROWS, tmp_path / "out")
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert paths["md"].read_text() == efficiency_table(ROWS)
    assert [EfficiencyRow(**r) for r in json.loads(paths["json"].read_text())] == ROWS


def test_run_report_renders_each_namespace(tmp_path):
    rows = [{"iteration": 0, "eval/pass@1": 0.4, "eval/mean_tokens": 60.0},
            {"iteration": 1, "reward/mean": 0.5, "rollout/mean_tokens": 70.0, "perf/iteration_s": 1.0},
            {"iteration": 2, "reward/mean": 0.6, "rollout/mean_tokens": 65.0, "eval/pass@1": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert metric_series(rows, "eval/pass@1") == ([0, 2], [0.4, 0.5])
    page = write_run_report(tmp_path).read_text()
    for section in ("eval", "reward", "rollout", "perf"):
        assert f"<h2>{section}</h2>" in page
    assert page.count("data:image/png;base64,") == 4
    assert page.index("<h2>eval</h2>") < page.index("<h2>reward</h2>") < page.index("<h2>perf</h2>")


def test_run_report_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        write_run_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not valid JSON"):
        write_run_report(tmp_path)

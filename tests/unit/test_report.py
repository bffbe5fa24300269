"""Reports: the token-efficiency table and plot, and a run's report.html from metrics.jsonl."""

import json

import pytest

from longrl.evaluate import EfficiencyRow
from longrl.report import efficiency_table, metric_series, training_time, write_efficiency_report, write_run_report

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


ROWS_OF_A_RUN = [
    {"iteration": 0, "eval/pass@1": 0.4, "eval/mean_tokens": 60.0},
    {"iteration": 1, "reward/mean": 0.5, "rollout/mean_tokens": 70.0, "perf/iteration_s": 30.0,
     "sync/probe_max_diff": 1e-6},
    {"iteration": 2, "reward/mean": 0.6, "rollout/mean_tokens": 65.0, "perf/iteration_s": 90.0,
     "sync/probe_max_diff": 2e-6, "eval/pass@1": 0.5, "eval/mean_tokens": 58.0}]


def test_run_report_opens_with_the_headline_then_settings_then_every_namespace(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS_OF_A_RUN))
    (tmp_path / "config.toml").write_text('name = "rl"\n[rollout]\ntemperature = 1.0\n')
    assert metric_series(ROWS_OF_A_RUN, "eval/pass@1") == ([0, 2], [0.4, 0.5])
    assert training_time(ROWS_OF_A_RUN) == [0.0, 30.0, 120.0]  # evaluation rows add nothing
    page = write_run_report(tmp_path).read_text()
    assert "held-out pass@1 0.400 at iteration 0 &rarr; 0.500 at 2 (best 0.500 at 2)" in page
    assert "training time 2.0 min" in page
    assert "<td><code>rollout.temperature</code></td><td><code>1.0</code></td>" in page
    for section in ("eval", "reward", "rollout", "perf", "sync"):
        assert f"<h3>{section}</h3>" in page
    assert page.count("data:image/png;base64,") == 6  # the headline and five namespaces
    assert (page.index('id="headline"') < page.index('id="settings"') < page.index('id="all"')
            < page.index("<h3>eval</h3>") < page.index("<h3>reward</h3>") < page.index("<h3>perf</h3>"))


def test_run_report_of_a_run_without_settings_or_evaluation(tmp_path):
    rows = [{"step": 10, "loss": 1.0}, {"step": 20, "loss": 0.5}]  # an SFT log
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = write_run_report(tmp_path).read_text()
    assert "2 logged rows" in page and 'id="headline"' not in page and 'id="settings"' not in page


def test_run_report_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        write_run_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not valid JSON"):
        write_run_report(tmp_path)

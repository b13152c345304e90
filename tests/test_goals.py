"""Issue 13's goals read off a campaign's result files."""

import json
from pathlib import Path


def _campaign(folder: Path, photos_per_hour: float, within: float, share: float, latency: float) -> Path:
    (folder / "bench").mkdir(parents=True)
    bench = {"fast_path": {"precision": "bf16"}, "latency": {"seconds": latency},
             "summary": {"best_batch": 32, "best_fraction_of_peak": share},
             "stream": {"batch": 32, "photos": 96, "photos_per_hour": photos_per_hour, "tolerance": 0.01,
                        "within_tolerance": within, "worst_vs_reference": 1.004 if within == 1 else 1.013}}
    (folder / "bench" / "bench.json").write_text(json.dumps(bench))
    rows = [{"name": "nstd_fp32", "reached": True, "seconds": 30.0, "best_vs_reference": 0.99},
            {"name": "nstd_fast_stopping_compiled", "reached": True, "seconds": 6.0, "best_vs_reference": 1.0},
            {"name": "tutorial", "reached": True, "seconds": 24.0, "best_vs_reference": 1.0},
            {"name": "neural_style_pt", "reached": False, "seconds": 40.0, "best_vs_reference": 2.0}]
    (folder / "ttq.json").write_text(json.dumps({"time_to_quality": {"contenders": rows}}))
    return folder


def test_each_goal_is_met_only_by_a_measurement_past_its_target(tmp_path):
    from benchmarks.goals import rows

    met = {goal.split(",")[0]: ok for goal, _, _, ok in rows([_campaign(tmp_path / "a", 12_000, 1.0, 0.36, 9.0)])}
    assert met == {"photos/h to the reference": "yes", "VGG pass": "yes", "drop to output": "yes",
                   "time to quality against tutorial": "no",  # 4x, under the 5x goal
                   "time to quality against neural_style_pt": "yes"}  # it never reached the picture
    short = {goal.split(",")[0]: ok for goal, _, _, ok in rows([_campaign(tmp_path / "b", 12_000, 0.9, 0.34, 12.0)])}
    # One output in ten outside the 1% band fails the stream, however fast.
    assert short["photos/h to the reference"] == "no" and short["VGG pass"] == "no" and short["drop to output"] == "no"


def test_the_compiled_contenders_count_from_their_own_file(tmp_path):
    from benchmarks.goals import rows

    folder = _campaign(tmp_path / "a", 12_000, 1.0, 0.36, 9.0)
    compiled = [{"name": "nstd_fp32", "reached": True, "seconds": 31.0, "best_vs_reference": 0.99},
                {"name": "nstd_fast_all_compiled", "reached": True, "seconds": 3.0, "best_vs_reference": 1.0}]
    (folder / "ttq-compiled.json").write_text(json.dumps({"time_to_quality": {"contenders": compiled}}))
    measured = {goal: m for goal, _, m, _ in rows([folder])}
    assert measured["time to quality against tutorial"] == "8.0× (nstd_fast_all_compiled, 3.0 s)"

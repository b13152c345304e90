import json

from nstd.cli import main

from test_cli import write_photo


def test_bench_compares_with_the_baseline_and_writes_json_and_markdown(tmp_path, models, capsys):  # noqa: F811
    write_photo(tmp_path / "c.png", 40, 48, 1)
    write_photo(tmp_path / "s.png", 40, 40, 2)
    out = tmp_path / "res"
    assert main(["bench", "--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "s.png"),
                 "--model", "random", "--models-dir", str(models), "--device", "cpu", "--size", "32",
                 "--iterations", "3", "--batches", "1,2", "--sizes", "32", "--no-latency", "--no-compile",
                 "--precision", "fp32", "--out", str(out)]) == 0
    data = json.loads((out / "bench.json").read_text())
    assert data["fast_path"]["precision"] == "fp32"  # as asked, where this CPU's auto may be bf16
    std = data["standard"]
    assert set(std) == {"baseline", "nstd_fp32", "nstd_fast"}
    for row in std.values():
        assert row["iterations"] == 3 and row["seconds"] > 0
        assert row["final_losses"]["content"] >= 0 and row["final_losses"]["style"] > 0
    assert [b["batch"] for b in data["batches"]] == [1, 2]
    s = data["summary"]
    assert s["speedup_batch1_fast"] == std["nstd_fast"]["images_per_hour"] / std["baseline"]["images_per_hour"]
    ttq = data["time_to_quality"]
    rows = {r["name"]: r for r in ttq["contenders"]}
    # Compiled contenders left out (a minute of compiling on a CPU; compile has its own test).
    assert set(rows) == {"nstd_fp32", "nstd_fp32_stopping", "nstd_fp32_coarse_to_fine", "nstd_fast",
                         "nstd_fast_coarse_to_fine", "nstd_fast_bf16_history", "tutorial", "neural_style_pt"}
    assert rows["neural_style_pt"]["seconds"] > 0 and len(rows["neural_style_pt"]["curve"]) >= 2
    # The reference run reaches its own picture by its standard iterations, at the latest.
    assert rows["nstd_fp32"]["reached"] and rows["nstd_fp32"]["iterations"] <= 3
    assert rows["nstd_fp32"]["objective"] <= ttq["reference_objective"] * 1.01
    for r in rows.values():
        assert r["best_vs_reference"] > 0 and r["seconds"] > 0
    # The stream: three batches' worth at the best batch, every photo out once, each scored.
    stream = data["stream"]
    best = max(data["batches"], key=lambda b: b["images_per_hour"])["batch"]
    assert stream["batch"] == best and stream["photos"] == 3 * best
    assert stream["photos_per_hour"] > 0 and stream["mean_iterations"] == 3  # too few to stop early
    assert 0 <= stream["within_tolerance"] <= 1
    assert 0 < stream["median_vs_reference"] <= stream["worst_vs_reference"]
    md = (out / "bench.md").read_text()
    assert "a stream at batch" in md
    assert "| baseline |" in md and "### Batch sweep" in md and "### Time to quality" in md
    assert "bench.md" in capsys.readouterr().err


def test_an_unknown_precision_is_one_line_naming_the_option(tmp_path, capsys):
    assert main(["bench", "--quick", "--precision", "fp16", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err == "nstd: error: --precision: precision must be one of auto, fp32, tf32, bf16, not 'fp16'"


def test_a_negative_stream_is_a_usage_error(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["bench", "--quick", "--stream-photos", "-3", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "argument --stream-photos: must be at least 0" in capsys.readouterr().err


def test_a_size_that_leaves_the_photo_too_narrow_is_one_line(tmp_path, capsys):
    write_photo(tmp_path / "c.png", 40, 80, 1)
    assert main(["bench", "--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "c.png"), "--size", "64",
                 "--sizes", "20", "--device", "cpu", "--out", str(tmp_path / "res")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("nstd: error: ")
    assert err.endswith("c.png: at a long side of 20 px it would be 20x10, under 16 px on a side; use a larger "
                        "--size or --sizes")

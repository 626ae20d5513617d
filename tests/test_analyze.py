"""``nsm analyze``: figures and analysis.json from synthetic activity.jsonl files of three runs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from pipelines.commands import analyze

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_records(neuron, n=7, seed=0, spread_growth=0.0):
    """Synthetic records: percentiles of a normal distribution whose width grows by ``spread_growth`` per record."""
    rng = np.random.default_rng(seed)
    z = {"5": -1.645, "15": -1.036, "50": 0.0, "85": 1.036, "95": 1.645}
    records = []
    for i in range(n):
        centre = float(rng.normal(0, 0.05))
        width = 1.0 + spread_growth * i
        weights = rng.normal(centre, 0.1 * width, 2000)
        counts, edges = np.histogram(weights, bins=20)
        records.append(
            {
                "epoch": round(i / 3, 6),
                "step": 10 * i,
                "neuron": neuron,
                "last_hidden": {
                    "layer": "features.16",
                    "percentiles": {k: centre + z[k] * width for k in ("15", "50", "85")},
                },
                "third_layer": {
                    "layer": "features.2",
                    "percentiles": {k: centre + 0.1 * z[k] * width for k in z},
                    "hist_edges": edges.tolist(),
                    "hist_counts": counts.tolist(),
                },
            }
        )
    return records


def write_run(folder, records, extra_lines=()):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text('[model]\nname = "nmnist_cnn"\n')
    (folder / "checkpoint.pt").write_bytes(b"not read by analyze")
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    (folder / "activity.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture()
def compare_out(tmp_path):
    """An ``nsm compare`` output folder with runs/bnsm, runs/sn and runs/dcnn."""
    out = tmp_path / "compare"
    data = {
        "bnsm": make_records("bnsm", seed=1),
        "sn": make_records("sn", seed=2, spread_growth=0.5),
        "dcnn": make_records("dcnn", n=4, seed=3),
    }
    for kind, records in data.items():
        write_run(out / "runs" / kind, records)
    return out, data


def namespace(out, run=None, checkpoint=None):
    return argparse.Namespace(run=run, checkpoint=checkpoint, out=str(out))


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10000
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_analyze_compare_folder_writes_figures_and_numbers(compare_out, tmp_path, capsys):
    out_dir, data = compare_out
    dest = tmp_path / "analysis"
    assert analyze.run(namespace(dest, run=[str(out_dir)])) == 0
    assert_png(dest / "input_percentiles.png")
    assert_png(dest / "weight_evolution.png")
    result = json.loads((dest / "analysis.json").read_text())
    # runs come in the canonical neuron-kind order: bnsm, dcnn, sn
    assert [r["neuron"] for r in result["runs"]] == ["bnsm", "dcnn", "sn"]
    for r in result["runs"]:
        records = data[r["neuron"]]
        assert r["records"] == len(records)
        assert r["epoch"] == [rec["epoch"] for rec in records]
        assert r["step"] == [rec["step"] for rec in records]
        assert r["last_hidden"]["layer"] == "features.16"
        for k in ("15", "50", "85"):
            assert r["last_hidden"]["percentiles"][k] == [rec["last_hidden"]["percentiles"][k] for rec in records]
        for k in ("5", "15", "50", "85", "95"):
            assert r["third_layer"]["percentiles"][k] == [rec["third_layer"]["percentiles"][k] for rec in records]
        hists = r["third_layer"]["histograms"]
        n = len(records)
        assert [h["position"] for h in hists] == ["first", "middle", "last"]
        for h, i in zip(hists, (0, n // 2, n - 1)):
            assert h["step"] == records[i]["step"]
            assert h["hist_edges"] == records[i]["third_layer"]["hist_edges"]
            assert h["hist_counts"] == records[i]["third_layer"]["hist_counts"]
        first, last = records[0], records[-1]
        s = r["summary"]
        assert s["input_spread_15_85"] == pytest.approx(
            [rec["last_hidden"]["percentiles"]["85"] - rec["last_hidden"]["percentiles"]["15"] for rec in (first, last)]
        )
        assert s["weight_spread_5_95"] == pytest.approx(
            [rec["third_layer"]["percentiles"]["95"] - rec["third_layer"]["percentiles"]["5"] for rec in (first, last)]
        )
    labels = {r["neuron"]: r["label"] for r in result["runs"]}
    assert labels == {
        "bnsm": "Bernoulli NSM",
        "dcnn": "CNN with batch normalization (dCNN)",
        "sn": "stochastic network, no normalization (SN)",
    }
    printed = capsys.readouterr().out
    assert "| bnsm | Bernoulli NSM | 7 |" in printed
    sn = next(r for r in result["runs"] if r["neuron"] == "sn")["summary"]["input_spread_15_85"]
    assert f"{sn[0]:.4g} -> {sn[1]:.4g}" in printed and sn[1] > sn[0]


def test_analyze_through_the_parser_with_run_folders_and_checkpoint(compare_out, tmp_path):
    out_dir, _ = compare_out
    parser = argparse.ArgumentParser(prog="nsm")
    analyze.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["analyze", "--run", str(out_dir / "runs" / "sn"), str(out_dir / "runs" / "bnsm"), "--out", str(tmp_path / "a")]
    )
    assert args.func(args) == 0
    result = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert [r["neuron"] for r in result["runs"]] == ["sn", "bnsm"]  # the order given

    args = parser.parse_args(
        ["analyze", "--checkpoint", str(out_dir / "runs" / "dcnn" / "checkpoint.pt"), "--out", str(tmp_path / "b")]
    )
    assert args.func(args) == 0
    result = json.loads((tmp_path / "b" / "analysis.json").read_text())
    assert [r["name"] for r in result["runs"]] == ["dcnn"]
    assert_png(tmp_path / "b" / "weight_evolution.png")


def test_parser_requires_out_and_one_source(tmp_path):
    parser = argparse.ArgumentParser(prog="nsm")
    analyze.add_parser(parser.add_subparsers(dest="command"))
    for argv in (
        ["analyze", "--run", "x"],
        ["analyze", "--out", "o"],
        ["analyze", "--run", "x", "--checkpoint", "y", "--out", "o"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_repeated_steps_keep_the_last_record(tmp_path):
    records = make_records("gnsm", n=4, seed=5)
    redo = json.loads(json.dumps(records[2]))
    redo["last_hidden"]["percentiles"] = {"15": -9.0, "50": 0.0, "85": 9.0}
    run = write_run(tmp_path / "run", records, extra_lines=[json.dumps(redo)])
    assert analyze.run(namespace(tmp_path / "out", run=[str(run)])) == 0
    r = json.loads((tmp_path / "out" / "analysis.json").read_text())["runs"][0]
    assert r["step"] == [0, 10, 20, 30]
    assert r["last_hidden"]["percentiles"]["85"][2] == 9.0


def test_same_neuron_kind_runs_are_told_apart_by_folder(tmp_path):
    a = write_run(tmp_path / "lr_high", make_records("bnsm", n=3, seed=6))
    b = write_run(tmp_path / "lr_low", make_records("bnsm", n=3, seed=7))
    assert analyze.run(namespace(tmp_path / "out", run=[str(a), str(b)])) == 0
    labels = [r["label"] for r in json.loads((tmp_path / "out" / "analysis.json").read_text())["runs"]]
    assert labels == ["Bernoulli NSM [lr_high]", "Bernoulli NSM [lr_low]"]


def test_single_record_run(tmp_path):
    run = write_run(tmp_path / "one", make_records("sn", n=1))
    assert analyze.run(namespace(tmp_path / "out", run=[str(run)])) == 0
    r = json.loads((tmp_path / "out" / "analysis.json").read_text())["runs"][0]
    assert [h["position"] for h in r["third_layer"]["histograms"]] == ["first"]


# ---------------------------------------------------------------- errors


def test_missing_activity_names_the_run_and_nsm_train(compare_out, tmp_path):
    out_dir, _ = compare_out
    (out_dir / "runs" / "sn" / "activity.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"runs/sn: no activity\.jsonl .*nsm train"):
        analyze.run(namespace(tmp_path / "out", run=[str(out_dir)]))
    assert not (tmp_path / "out" / "analysis.json").exists()


def test_missing_paths_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        analyze.run(namespace(tmp_path / "out", run=[str(tmp_path / "nope")]))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        analyze.run(namespace(tmp_path / "out", checkpoint=[str(tmp_path / "nope.pt")]))
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no run folders"):
        analyze.run(namespace(tmp_path / "out", run=[str(tmp_path / "empty")]))


def good_line(**change):
    record = make_records("bnsm", n=1)[0]
    record.update(change)
    return json.dumps(record)


def bad_third_layer(**change):
    record = make_records("bnsm", n=1)[0]
    record["third_layer"].update(change)
    return json.dumps(record)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (good_line(step=1.5), "step must be an integer"),
        (good_line(epoch="one"), "epoch must be a number"),
        (good_line(epoch=float("nan")), "epoch must be finite"),
        (json.dumps({"epoch": 0, "step": 1, "neuron": "bnsm", "third_layer": {}}), "missing field 'last_hidden'"),
        (good_line(last_hidden={"layer": "f", "percentiles": {"15": 0.0, "50": 1.0}}), "lacks the 85th percentile"),
        (good_line(last_hidden={"layer": "f", "percentiles": {"15": 2.0, "50": 1.0, "85": 3.0}}), "not non-decreasing"),
        (good_line(last_hidden={"percentiles": {"15": 0.0, "50": 1.0, "85": 3.0}}), "layer must be"),
        (bad_third_layer(hist_counts=[1, 2]), "hist_edges"),
        (bad_third_layer(hist_edges=[0.0, 0.0, 1.0], hist_counts=[1, 2]), "strictly increasing"),
        (bad_third_layer(hist_edges=[0.0, 0.5, 1.0], hist_counts=[1, -2]), "must be a count"),
        (good_line(neuron="sn"), "several neuron kinds"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    first = good_line(step=0)
    run = write_run(tmp_path / "run", [], extra_lines=[first, "", line.replace('"step": 0', '"step": 5')])
    pattern = "several neuron kinds" if message == "several neuron kinds" else rf"activity\.jsonl: line 3: .*{message}"
    with pytest.raises(ValueError, match=pattern):
        analyze.run(namespace(tmp_path / "out", run=[str(run)]))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_empty_activity_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "activity.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no activity records"):
        analyze.run(namespace(tmp_path / "out", run=[str(run)]))

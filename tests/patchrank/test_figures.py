"""Trade-off figures and the results-file reader, on synthetic sweep results (no model needed)."""
import json

import pytest

from patchrank import cli, figures, results, styles
from patchrank.errors import PatchRankError


def fake_results(latency=True):
    rows = []
    for mi, (meth, drop) in enumerate({"golden": 0.02, "predictor": 0.05, "random": 0.15}.items()):
        for r, gf in ((1.0, 0.40), (0.6, 0.27), (0.3, 0.18)):
            acc = 0.8 - drop * (1 - r) * 3
            over = (65.0 if meth == "golden" else 0.001 * mi) if r < 1 else 0.0   # golden: its search
            rows.append({"method": meth, "ratio": r, "kept": round(196 * r), "extra_tokens": 0,
                         "n": 100, "correct": round(100 * acc), "accuracy": acc,
                         "ci_low": acc - 0.07, "ci_high": acc + 0.06, "gflops": gf + over,
                         "encoder_gflops": gf, "ranker_gflops": over,
                         "latency_ms": 20 * gf if latency else None,
                         "latency_ms_b1": 20 * gf if latency else None, "latency_ms_b1_min": 19 * gf,
                         "latency_ms_bN": 600 * gf if latency else None, "batch_N": 32 if latency else None,
                         "speedup_b1": 0.4 / gf if latency else None, "precomputed": meth == "golden"})
    meta = {"model": "bundled", "data": "bundled-eval", "n_images": 100,
            "methods": ["golden", "predictor", "random"], "full": {"accuracy": 0.8, "gflops": 0.4}}
    return {"format": results.FORMAT, "meta": meta, "rows": rows}


def test_load_results_and_errors(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(fake_results()))
    res = results.load_results(p)
    assert res.methods() == ["golden", "predictor", "random"] and res.batch_n == 32
    assert [r["ratio"] for r in res.series("random")] == [1.0, 0.6, 0.3]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(fake_results()["rows"]))
    assert len(results.load_results(bare).rows) == 9
    bad = fake_results()
    del bad["rows"][4]["gflops"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(PatchRankError, match=r"bad.json, row 4: row lacks gflops"):
        results.load_results(tmp_path / "bad.json")
    pct = fake_results()
    pct["rows"][0]["accuracy"] = 80.0
    (tmp_path / "pct.json").write_text(json.dumps(pct))
    with pytest.raises(PatchRankError, match="fraction"):
        results.load_results(tmp_path / "pct.json")
    (tmp_path / "junk.json").write_text("{")
    found, problems = results.load_results_dir(tmp_path)
    assert [f.path.rsplit("/", 1)[1] for f in found] == ["bare.json", "r.json"]
    assert len(problems) == 3 and any("junk.json" in s for s in problems)


def test_plotly_figures_one_line_per_method_with_hover():
    g, lat = figures.tradeoff_figures(fake_results())
    assert [t.name for t in g.data] == [
        "golden (one-shot leave-one-out), drawn at encoder cost (+65 GFLOPs search)", "predictor", "random"]
    assert list(g.data[0].x) == [0.40, 0.27, 0.18]          # the search is named, not drawn
    t = g.data[1]
    assert list(t.x) == [0.4, 0.271, 0.181] and t.y[0] == pytest.approx(80.0)
    assert t.error_y.array[0] == pytest.approx(6.0) and t.error_y.arrayminus[0] == pytest.approx(7.0)
    assert "keep ratio 0.60 (118 patches)" in t.text[1] and "GFLOPs 0.271" in t.text[1]
    assert "latency b=1" in t.text[1] and "speedup" in t.text[1]
    assert "GFLOPs 65.3" in g.data[0].text[1] and "searched beforehand" in g.data[0].text[1]
    assert g.data[0].line.dash == "dot" and lat.data[0].name == "golden (one-shot leave-one-out)"
    assert "batch 1" in lat.layout.xaxis.title.text and len(lat.data) == 3
    no_lat = figures.tradeoff_figure(fake_results(latency=False), "latency_ms_b1")
    assert len(no_lat.data) == 0


def test_png_and_markdown(tmp_path):
    path = figures.save_png(fake_results(), tmp_path / "docs" / "tradeoff.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list((tmp_path / "docs").glob(".*tmp*"))
    only_gf = figures.save_png(fake_results(latency=False), tmp_path / "g.png")   # latency panel dropped
    assert only_gf.stat().st_size > 3000
    md = figures.markdown_table(fake_results())
    lines = md.splitlines()
    assert lines[0] == "| method | keep 1 | keep 0.6 | keep 0.3 |"
    assert lines[3].startswith("| predictor | 80.0 [73.0, 86.0] | 74.0 [")
    assert "predictor speedup, batch 1" in lines[5]
    assert lines[7] == "GFLOPs per image, encoder + ranker (1 MAC = 2 FLOPs):"
    assert lines[11] == "| golden (one-shot leave-one-out) | 0.4 | 65.3 | 65.2 |"
    assert lines[12] == "| predictor | 0.4 | 0.271 | 0.181 |"
    assert lines[-1] == "| encoder alone | 0.4 | 0.27 | 0.18 |"


def test_cli_main(tmp_path, capsys):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(fake_results()))
    assert cli.main(["figures", str(p), "--png", str(tmp_path / "t.png")]) == 0
    out = capsys.readouterr()
    assert "| golden (one-shot leave-one-out) |" in json.loads(out.out)["table"] and "| golden" in out.err
    assert cli.main(["figures", str(p), "--format", "md"]) == 0
    assert capsys.readouterr().out.startswith("| method |")
    assert cli.main(["figures", str(tmp_path / "missing.json")]) == 1


def test_off_scale_method_and_focus_range():
    """A method far below the rest (token norm on the bundled sweep) is named, and the focus
    range covers the others with their intervals; nothing is off scale in a tight field."""
    drops = {"golden": 0.02, "predictor": 0.03, "random": 0.06, "norm": 0.5}
    rows = [{"method": m, "ratio": r, "accuracy": 0.9 - d * (1 - r) / 0.7, "gflops": 0.4 * r,
             "ci_low": 0.88 - d * (1 - r) / 0.7, "ci_high": 0.92 - d * (1 - r) / 0.7}
            for m, d in drops.items() for r in (1.0, 0.6, 0.3)]
    tight = results.parse_results({"meta": {}, "rows": [r for r in rows if r["method"] != "norm"]})
    assert figures.off_scale(tight) == {} and figures.focus_range(tight) is None
    res = results.parse_results({"meta": {"full": {"accuracy": 0.9}}, "rows": rows})
    assert figures.off_scale(res) == {"norm": pytest.approx(0.4)}
    lo, hi = figures.focus_range(res)
    others = [r for r in res.rows if r["method"] != "norm"]
    assert lo <= min(r["ci_low"] for r in others) and hi >= max(r["ci_high"] for r in others)
    assert lo > 0.8


def test_one_style_table_for_figures_tables_and_the_app():
    """Every method has one name, colour and marker; the paper-shaped table's labels differ only
    where the paper names a method differently, and unknown methods still get a style."""
    assert styles.display_name("tome") == "ToMe merging" and styles.paper_name("tome") == "ToMe"
    assert styles.paper_name("predictor") == "Ours (predictor)" and styles.paper_name("random") == "random"
    assert styles.paper_name("full") == "CLIP (unpruned)"
    assert len({s.colour for s in styles.STYLES.values()}) == len(styles.STYLES)
    assert styles.display_name("mine") == "mine" and styles.colour("mine") == styles.FALLBACK_COLOUR

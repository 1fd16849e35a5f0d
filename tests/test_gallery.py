"""benchmarks/gallery.py: the quick path writes a consistent table, and its checks are real — a broken group
action, a broken round trip or group elements that move nothing make the row (and the script) fail; a
refused architecture is a row with the converter's message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import qegraph
from qegraph.graph.parameter_graph import ParameterGraph
from qegraph.symmetry.group import GroupElement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gallery  # noqa: E402

ROWS = ["vgg_nobn", "resnext", "nn.TransformerEncoder (post-norm, ReLU)"]


@pytest.fixture(scope="module")
def measured() -> list[dict]:
    return gallery.run([gallery.BY_NAME[n] for n in ROWS], progress=False)


def test_quick_rows_are_measured_and_pass(measured: list[dict]) -> None:
    vgg, resnext, enc = measured
    for row, name in zip(measured, ROWS):
        assert row["name"] == name and row["status"] == "ok" and row["ok"]
        assert row["round_trip"] == {"float32": True, "qeg_file": True, "float64": True}
        assert row["elements_moved_values"] and row["max_rel_err"] <= gallery.TOLERANCE
        assert len(row["to_graph_runs_s"]) == gallery.REPEATS
        assert row["to_graph_s"] == sorted(row["to_graph_runs_s"])[1]  # the median of 3
        model, _ = gallery.BY_NAME[name].build()
        sd = model.state_dict()
        assert row["params"] == sum(t.numel() for t in sd.values())
        assert row["checkpoint_bytes"] == 4 * sum(t.numel() for t in sd.values() if t.is_floating_point()) + 8 * sum(
            t.numel() for t in sd.values() if not t.is_floating_point())
        assert sum(row["group"]["by_kind"].values()) == row["group"]["unit_groups"]
    # known values: VGG without BatchNorm: 3×3 kernels (9 slots) and a Linear reading a 16×2×2 map (4 slots);
    # its ReLU units keep positive scalings, input and output are fixed
    assert vgg["max_slot_width"] == 9 and vgg["group"]["by_kind"]["fixed"] == 2 and vgg["group"]["by_kind"]["scale"] > 0
    assert vgg["nodes"] == 3 + 4 + 8 + 16 + 16 + 16 + 16 + 10
    assert resnext["max_slot_width"] == 49  # the 7×7 stem
    assert resnext["group"]["grouped_conv_groups"] > 0 and resnext["group"]["heads"] == 0
    # 2 layers × 4 heads, full GL gauges (no rotary); the stream touches input and output: fixed
    assert enc["group"]["heads"] == 8 and enc["group"]["head_groups"] == 2 and enc["group"]["gl"] == "AB"
    assert enc["group"]["by_kind"]["heads"] == 2 and enc["group"]["by_kind"]["fixed"] >= 1


def test_table_and_json(measured: list[dict], tmp_path: Path) -> None:
    meta = {"command": "python benchmarks/gallery.py --quick", "machine": "test", "date": "today", "total_s": 1.0}
    md, js = tmp_path / "gallery.md", tmp_path / "gallery.json"
    gallery.write(measured, meta, md, js)
    assert json.loads(js.read_text())["rows"] == json.loads(json.dumps(measured))
    lines = md.read_text().splitlines()
    assert "* Command: `python benchmarks/gallery.py --quick`" in lines and "* Machine: test" in lines
    headers = [ln for ln in lines if ln.startswith("| architecture |")]
    assert headers and all([c.strip() for c in h.strip("|").split("|")] == list(gallery.COLUMNS) for h in headers)
    for row in measured:
        line = next(ln for ln in lines if ln.startswith(f"| {row['name']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(gallery.COLUMNS)
        got = dict(zip(gallery.COLUMNS, cells))
        assert got["params"] == f"{row['params']:,}" and got["edges"] == f"{row['edges']:,}"
        assert got["round trip"] == "bit-identical" and got["max rel. err"] == f"{row['max_rel_err']:.1e}"
    assert lines[-1] == f"Checks: {len(measured)} rows pass, 0 refused, 0 skipped, 0 failed."


def _broken_act(self: GroupElement, graph: ParameterGraph) -> ParameterGraph:
    """Moves the node features but leaves the weights where they were (not a symmetry)."""
    node_src, q = self.node_maps(graph)
    return graph.with_features(x=graph.x[node_src] * q.to(graph.x.dtype).unsqueeze(1), edge_val=graph.edge_val * 1.0)


def test_a_broken_group_action_fails_the_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(GroupElement, "act", _broken_act)
    js = tmp_path / "g.json"
    assert gallery.main(["--quick", "--rows", "vgg_nobn", "--json", str(js), "--md", str(tmp_path / "g.md")]) == 1
    row = json.loads(js.read_text())["rows"][0]
    assert row["status"] == "FAILED" and not row["ok"] and row["max_rel_err"] > 1e-3
    assert all(row["round_trip"].values())  # only the function check fails
    assert "rows pass, 0 refused, 0 skipped, 1 failed: vgg_nobn." in (tmp_path / "g.md").read_text()


def test_elements_that_move_nothing_fail_the_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GroupElement, "act", lambda self, graph: graph)
    row = gallery.measure(gallery.BY_NAME["vgg_nobn"])
    assert row["max_rel_err"] == 0.0 and not row["elements_moved_values"] and row["status"] == "FAILED"


def test_a_broken_round_trip_fails_the_row(monkeypatch: pytest.MonkeyPatch) -> None:
    exact = ParameterGraph.to_state_dict

    def off_by_one_ulp(self: ParameterGraph) -> dict[str, torch.Tensor]:
        sd = exact(self)
        key = next(k for k, v in sd.items() if v.is_floating_point())
        sd[key].view(-1)[0] = torch.nextafter(sd[key].view(-1)[0], torch.tensor(float("inf"), dtype=sd[key].dtype))
        return sd

    monkeypatch.setattr(ParameterGraph, "to_state_dict", off_by_one_ulp)
    row = gallery.measure(gallery.BY_NAME["resnext"])
    assert row["round_trip"] == {"float32": False, "qeg_file": False, "float64": False}
    assert row["status"] == "FAILED"
    assert "**NO** (float32, qeg_file, float64)" in gallery.table_rows([row])[0]


def test_a_refused_architecture_is_a_row_with_the_message() -> None:
    from nets import Upsampler

    entry = gallery.Entry("upsampler", "test", "tests/nets.py", lambda: (Upsampler().double().eval(),
                                                                       (torch.zeros(1, 1, 8, 8),)))
    row = gallery.measure(entry)
    assert row["status"] == "refused" and row["message"].startswith("UnsupportedOpError")
    assert "module 'up' (Upsample)" in row["message"]  # the converter's own message, naming the module
    with pytest.raises(qegraph.QegraphError):
        qegraph.to_graph(Upsampler())
    assert "**refused**: UnsupportedOpError" in gallery.table_rows([row])[0][2]


def test_hugging_face_rows_are_skipped_with_a_reason_without_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gallery, "transformers_missing", lambda: "transformers is not importable (test)")
    row = gallery.measure(gallery.BY_NAME["BertModel"])
    assert row["status"] == "skipped" and row["message"] == "transformers is not importable (test)"
    assert gallery.table_rows([row])[0][2] == "**skipped**: transformers is not importable (test)"


def test_committed_page_is_generated_from_the_committed_results() -> None:
    """docs/gallery.md is the script's rendering of benchmarks/results/gallery.json (not typed by hand), and
    the committed run covers every row of the script."""
    results = json.loads(gallery.JSON_OUT.read_text())
    assert gallery.MD_OUT.read_text() == gallery.markdown(results["rows"], results["meta"])
    assert [r["name"] for r in results["rows"]] == [e.name for e in gallery.ENTRIES]
    assert results["meta"]["command"] == "python benchmarks/gallery.py" and not results["meta"]["quick"]

import pytest

from r1v_ray.eval import markdown_table, score_rows
from r1v_ray.prompts import paper_request
from r1v_ray.rewards import MULTI_CHOICE_PROMPT, OPEN_PROMPT


def test_pass_at_1_over_runs_and_breakdowns():
    rows = [
        {
            "id": "1",
            "answer": "B",
            "choices": ["x", "y"],
            "category": "mc",
            "source": "s1",
            "completions": ["Answer: \\boxed{B}", "Answer: \\boxed{A}", "Answer: \\boxed{y}"],
        },
        {
            "id": "2",
            "answer": "12",
            "choices": None,
            "category": "open",
            "source": "s1",
            "completions": ["Answer: \\boxed{12}", "Answer: \\boxed{12.0}", "no idea"],
        },
        {
            "id": "3",
            "answer": "7",
            "choices": None,
            "category": "open",
            "source": "s2",
            "completions": ["\\boxed{8}", "\\boxed{7}", "\\boxed{6}"],
        },
        {
            "id": "4",
            "answer": "C",
            "choices": ["p", "q", "r"],
            "category": "mc",
            "source": "s2",
            "completions": ["\\boxed{C}", "\\boxed{C}", "\\boxed{C}"],
        },
    ]
    report = score_rows(rows, runs=3)
    # run 1: rows 1,2,4 right; run 2: 2,3,4; run 3: 1,4
    assert report["overall"]["runs"] == [75.0, 75.0, 50.0]
    assert report["overall"]["pass@1_mean"] == pytest.approx(66.667, abs=1e-3)
    assert report["overall"]["pass@1_std"] == pytest.approx(14.434, abs=1e-3)
    assert report["by_category"]["mc"]["runs"] == [100.0, 50.0, 100.0]
    assert report["by_source"]["s2"]["runs"] == [50.0, 100.0, 50.0]
    md = markdown_table(report, "t")
    assert "66.67 ± 14.43" in md and "| mc | 2 |" in md


def test_completions_must_match_runs():
    with pytest.raises(ValueError, match="2 completions for 3 runs"):
        score_rows([{"id": "x", "answer": "1", "completions": ["a", "b"]}], runs=3)


def test_paper_request_uses_the_papers_prompts():
    mc = paper_request({"id": 1, "question": "Q?", "choices": ["a", "b"], "image": b"x"}, 5, 64, 0.6, 0.95, 0)
    text = mc.messages[0]["content"][1]["text"]
    assert text.endswith(MULTI_CHOICE_PROMPT) and "A. a\nB. b" in text
    assert mc.sampling.n == 5 and mc.images == [b"x"] and mc.request_id == "1"
    op = paper_request({"id": 2, "question": "Q?", "choices": None, "image": b"x"}, 1, 64, 0.6, 0.95, 0)
    assert op.messages[0]["content"][1]["text"].endswith(OPEN_PROMPT)


def test_rejected_rows_count_as_wrong_and_are_reported():
    right = {"answer": "7", "choices": None, "source": "s", "completions": ["\\boxed{7}", "\\boxed{7}"]}
    rows = [
        {"id": "1", "category": "a", **right},
        {"id": "2", "category": "a", **right},
        # rejected by the engine (no completions): wrong in every run, not left out of the denominator
        {"id": "3", "category": "b", "answer": "7", "choices": None, "source": "s", "completions": None, "error": "x"},
        {"id": "4", "category": "a", **right, "error": None},
    ]
    report = score_rows(rows, runs=2)
    assert report["overall"]["runs"] == [75.0, 75.0] and report["overall"]["n"] == 4
    assert report["overall"]["rejected"] == 1
    assert report["by_category"]["b"] == {**report["by_category"]["b"], "n": 1, "rejected": 1, "pass@1_mean": 0.0}
    assert report["by_category"]["a"]["rejected"] == 0
    assert "Rejected rows (no completion; counted as wrong in Pass@1): 1" in markdown_table(report, "t")


def test_per_row_scores_for_every_run_and_chance_in_the_table():
    rows = [
        {
            "id": 1,
            "answer": "B",
            "choices": ["x", "y", "z"],
            "category": "shape_kind",
            "source": "synthetic/shape_kind",
        },
        {"id": 2, "answer": "3", "choices": None, "category": "count_color", "source": "synthetic/count_color"},
    ]
    rows[0]["completions"] = ["\\boxed{B}", "\\boxed{A}"]
    rows[1]["completions"], rows[1]["error"] = None, "engine failed"  # wrong in every run, kept as a row
    report = score_rows(rows, runs=2)
    assert report["per_row"] == [
        {"id": "1", "category": "shape_kind", "answer": "B", "correct": [1.0, 0.0]},
        {"id": "2", "category": "count_color", "answer": "3", "correct": [0.0, 0.0]},
    ]
    md = markdown_table({k: v for k, v in report.items() if k != "per_row"}, "t")
    assert "| category | n | Pass@1 mean | std | chance |" in md
    assert "| shape_kind | 1 | 50.00 | 70.71 | 33.33 |" in md and "| count_color | 1 | 0.00 | 0.00 | 14.29 |" in md
    assert "| synthetic/shape_kind | 1 | 50.00 | 70.71 | 33.33 |" in md

"""Evaluation: Pass@1 over k sampled runs with per-category/per-source breakdowns."""

from r1v_ray.eval.scoring import markdown_table, score_rows

__all__ = ["markdown_table", "score_rows"]

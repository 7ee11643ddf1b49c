"""Engines: rollout (vLLM, HF), learner (DeepSpeed), judge, weight sync."""

"""Offline evaluation: rank classification and greedy decoding through seqio, metrics, and the report.

Modules, in the order of the flow: `metrics` (metric functions and the seqio glue the registry attaches to
each catalog Task), `inference`, `batching` and `decoding` (the model's score_fn / predict_fn), `evaluator`
(checkpoints, and seqio.Evaluator per task), `report` (metrics.json, Markdown, charts). The entry point is
`python -m optiml_jax.eval`.
"""

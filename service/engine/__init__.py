"""The scoring engine: the forest's flat memory-mapped arrays and the C walker that scores them bit for
bit as `predict_proba` does (`_walker.c`), loading and converting models, out-of-distribution flags,
reason codes, drift bins (`_bins.c`) and the challenger. Nothing here knows about HTTP or files of
transactions.

Imports: `service.core`."""

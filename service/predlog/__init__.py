"""The prediction log: one record per scored row, the record's versioned schema (`record`), the
per-worker spool the hot path appends to (`spool`, one write per request, framed by length and
CRC), the sink that turns a request's scores into one frame (`sink`), the compactor that turns
sealed spool segments into Parquet (`compactor`, a process of its own) and the log's state for
/health/prediction-log and /metrics (`status`).

Imports: `service.core`."""

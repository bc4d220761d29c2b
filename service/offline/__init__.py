"""Work on tables of transactions rather than requests: the one reader of transaction files
(`csvfile.py`, and `labelled.py` for training and evaluation), the table engine over Arrow columns
(`_columns.c`), bulk scoring of files on every core (`make score`), the Spark job, the feature
store's writer (`make features`), the prediction log's re-scoring check (`make verify-log`), the
label table (`labels`, `make labels`), each model's outcomes from the log joined to it
(`outcomes` and its page `outcomes_report`, `make outcomes`; `report_page` is the offline reports'
shared HTML), and the next model's training table from the log and the labels (`training_set`,
`make training-set`; `log_table` reads the log's partitions of a range of dates).

Bulk scoring, by job: `bulk` (the command line), `score_file` (one run: the parent's side),
`workers` (the forked scoring processes), `messages` (what they and the parent send each other),
`job` (a run as the workers see it), `source` (reading a file in pieces), `sinks` (the output and
rejects files), `slots` (memory shared with the workers), `errors`.

Imports: `service.engine`, `service.contract`, `service.store`, `service.predlog`, `service.core`;
never `service.api`."""

"""Work on tables of transactions rather than requests: the one reader of transaction files
(`csvfile.py`, and `labelled.py` for training and evaluation), the table engine over Arrow columns
(`_columns.c`), bulk scoring of files on every core (`make score`), the Spark job, the feature
store's writer (`make features`) and the prediction log's re-scoring check (`make verify-log`).

Imports: `service.engine`, `service.contract`, `service.store`, `service.core`; never `service.api`."""

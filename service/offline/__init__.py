"""Work on tables of transactions rather than requests: the table engine over Arrow columns
(`_columns.c`), bulk scoring of files on every core (`make score`), the Spark job, and the feature
store's writer (`make features`).

Imports: `service.engine`, `service.contract`, `service.store`, `service.core`; never `service.api`."""

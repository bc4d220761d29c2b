"""The request contract: the JSON Schema documents in `schemas/` and the fast readers compiled from
them (`_rows.c`), proven to accept and reject exactly what `jsonschema` does.

Imports: `service.core`."""

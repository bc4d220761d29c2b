"""The HTTP face: the Falcon app and its resources (v1, the Open Inference Protocol, by-id), the
OpenAPI document, errors, keys, the per-key budget (`_budget.c`), deadlines and body reading. Thin
adapters over the engine: nothing about scoring is decided here.

Imports: `service.engine`, `service.contract`, `service.store`, `service.telemetry`, `service.predlog`,
`service.core`."""

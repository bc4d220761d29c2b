"""What the service tells its operators: Prometheus metrics (multiprocess, summed over workers) and
JSON logs.

Imports: `service.core`."""

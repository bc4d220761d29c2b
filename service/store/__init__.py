"""The online feature store of the by-id routes: the stored record's one definition and the bounded
Redis client.

Imports: `service.core`."""

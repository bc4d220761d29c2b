"""The process that serves: the WSGI entry point built once in the gunicorn master (`wsgi`), the
worker class, the one start command (`python -m service.runtime.serve`) and the container's health
check.

Imports: any layer of `service`; nothing imports it."""

"""The WSGI entry point. gunicorn imports it once, in the master, before forking (preload_app):
settings, model verification and loading, and schema compilation all happen here, never per
worker or per request."""

from __future__ import annotations

import gc
import logging
import sys

from service import logs, settings as settings_module
from service.app import create_app
from service.artifacts import ArtifactError
from service.loader import load_model
from service.schema import TransactionValidator, load_schema_document

logs.configure()
log = logging.getLogger("service")

settings = settings_module.load_or_exit()
try:
    model = load_model(settings)
except ArtifactError as e:
    log.error("model not loaded: %s", e)
    sys.exit(f"model error: {e}")
validator = TransactionValidator(load_schema_document())
application = create_app(settings, model, validator)
log.info("model %s loaded (%s, %s trees); serving with threshold %d", model.version,
         type(model.scorer).__name__, getattr(model.scorer, "n_trees", "?"), settings.fraud_threshold)

# Objects made so far live for the process's lifetime: move them out of the collector's reach so
# that collections in the workers do not write to (and so copy) the pages they share with the master.
gc.collect()
gc.freeze()

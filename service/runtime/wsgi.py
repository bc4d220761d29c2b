"""The WSGI entry point. gunicorn imports it once, in the master, before forking (preload_app):
settings, model verification and loading, and schema compilation all happen here, never per
worker or per request. A model rollout (SIGHUP to the master) builds the next application here
too, before the new workers are forked from it."""

from __future__ import annotations

import gc
import logging
import sys
from typing import Any

import falcon

from service.api.app import create_app, prediction_spool
from service.api.budget import RowBudget
from service.api.deadline import Deadlines
from service.core import settings as settings_module
from service.core.artifacts import ArtifactError
from service.engine import challenger as challenger_module
from service.engine.loader import LoadedModel, load_model
from service.telemetry import logs, metrics
from service.telemetry.tracing import Tracing, TracingConfigError

logs.configure()
log = logging.getLogger("service")
settings = settings_module.load_or_exit()
# Made once, before the first fork: every worker, and every application a rollout builds, spends
# from the same per-key budget.
budget = RowBudget.for_settings(settings)
# The prediction log's spool, likewise made once: each worker opens its own segment after fork
# (gunicorn.conf.py's post_fork) and seals it when it exits.
spool = prediction_spool(settings)
# The OpenTelemetry export (OTEL_TRACES_EXPORTER=otlp), likewise: each worker starts its exporter
# after fork (post_fork) and flushes it when it exits. None when off.
try:
    tracing = Tracing.from_environ(settings.app_version, settings_module.read_environment())
except (TracingConfigError, ImportError) as e:
    sys.exit(f"config error: {e}")


def with_deadlines(app: falcon.App) -> Deadlines:
    """The app behind the per-request deadline (service/api/deadline.py), which sheds late requests
    before Falcon sees them."""
    return Deadlines(
        app,
        settings.request_deadline_ms,
        observe_wait=metrics.observe_queue_wait,
        count_shed=metrics.count_shed,
    )


def load_challenger(starting: bool) -> tuple[LoadedModel | None, str | None]:
    """(challenger, why it was refused). A challenger that cannot be loaded or served fast is
    refused with one line; the champion answers alone (at start with MODEL_REQUIRED: the service
    stops instead)."""
    try:
        challenger = challenger_module.load(settings)
    except ArtifactError as e:
        if starting and settings.model_required:
            sys.exit(f"challenger error: {e}")
        log.error("challenger refused, scoring with the champion alone: %s", e)
        return None, str(e)
    if challenger is not None:
        log.info("challenger %s loaded; threshold %d", challenger.version, challenger.threshold["value"])
    return challenger, None


def build(current: LoadedModel | None = None) -> tuple[Deadlines, LoadedModel | None]:
    """The application for the model now at MODEL_PATH. Without a loadable model it answers 503
    (health included, so a load balancer drains it) unless MODEL_REQUIRED."""
    try:
        model = load_model(settings)
    except ArtifactError as e:
        if settings.model_required:
            log.error("model not loaded: %s", e)
            sys.exit(f"model error: {e}")
        log.error("model not loaded, serving 503 until one is: %s", e)
        return with_deadlines(create_app(settings, None, str(e), budget, tracing=tracing)), None
    log.info(
        "model %s loaded (%s, %s trees); threshold %d (%s)",
        model.version,
        type(model.scorer).__name__,
        getattr(model.scorer, "n_trees", "?"),
        model.threshold["value"],
        model.threshold["source"],
    )
    challenger, refused = load_challenger(starting=True)
    app = create_app(
        settings, model, budget=budget, challenger=challenger, challenger_refused=refused, spool=spool, tracing=tracing
    )
    return with_deadlines(app), model


def freeze() -> None:
    # Objects made so far live as long as the process: move them out of the collector's reach so
    # that collections in the workers do not write to (and so copy) pages shared with the master.
    gc.collect()
    gc.freeze()


application, model = build()
freeze()


def roll_out(server: Any) -> None:
    """gunicorn's on_reload hook, in the master: load and verify the new model, then hand the new
    application to the workers about to be forked. Old workers keep their own model until they
    finish their requests and stop. A model that fails verification changes nothing."""
    global application, model
    try:
        candidate = load_model(settings)
    except ArtifactError as e:
        log.error("rollout refused, still serving %s: %s", model.version if model else "no model", e)
        return
    challenger, refused = load_challenger(starting=False)
    gc.unfreeze()
    application = with_deadlines(
        create_app(
            settings,
            candidate,
            budget=budget,
            challenger=challenger,
            challenger_refused=refused,
            spool=spool,
            tracing=tracing,
        )
    )
    model = candidate
    server.app.callable = application
    freeze()
    log.info("rolled out model %s%s", candidate.version, f" with challenger {challenger.version}" if challenger else "")

# nginx's limits from the settings the api container runs with, by the rule of
# service/core/settings.py (Settings.scoring_queue, Settings.batch_body_kb). Every nginx container
# (compose, Kubernetes, ECS) sources it from /etc/nginx/templates/ in its command, then hands over
# to the image's entrypoint, which renders nginx.conf.template with these values.
# tests/test_nginx_limits.py holds this rule to the launcher's for any settings.
: "${WORKERS:?must be the api container's WORKERS}"
: "${QUEUE_PER_WORKER:?must be the api container's QUEUE_PER_WORKER}"
: "${BATCH_MAX:?must be the api container's BATCH_MAX}"
# WORKERS x QUEUE_PER_WORKER API requests inside nginx at once (limit_conn).
SCORING_QUEUE=$((WORKERS * QUEUE_PER_WORKER))
# ceil(BATCH_MAX x 1.5 KiB) + 1 KiB: ceil(3b / 2) in integers is (3b + 1) / 2.
BATCH_MAX_BODY_SIZE="$(((BATCH_MAX * 3 + 1) / 2 + 1))k"
CLIENT_MAX_BODY_SIZE=8k
export SCORING_QUEUE BATCH_MAX_BODY_SIZE CLIENT_MAX_BODY_SIZE

#!/bin/sh
# What the official image's /docker-entrypoint.sh and 20-envsubst-on-templates.sh do: render each
# $NGINX_ENVSUBST_TEMPLATE_DIR/*.template into $NGINX_ENVSUBST_OUTPUT_DIR, substituting only the
# variables that are set (nginx's own $variables survive), then exec the command.
set -eu
if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
    template_dir="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
    suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
    output_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
    defined_envs=$(printf '${%s} ' $(env | cut -d= -f1))
    for template in "$template_dir"/*"$suffix"; do
        [ -f "$template" ] || continue
        output="$output_dir/$(basename "$template" "$suffix")"
        echo "$0: rendering $template to $output"
        envsubst "$defined_envs" < "$template" > "$output"
    done
fi
exec "$@"

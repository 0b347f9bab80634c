#!/usr/bin/env bash
# Checks the Prometheus and Grafana examples the package ships: the scrape configuration with
# `promtool check config`, the alerting rules with `promtool check rules` and their unit tests
# with `promtool test rules`, then (check-exprs.py) that the dashboards are Grafana dashboards
# whose expressions promtool can parse, and that every expression of the rules, their tests
# and the dashboards names only metrics and labels of metric-names.txt. Run by `make prometheus-examples`; needs promtool (Debian's
# prometheus package) and python3-yaml.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
grafana=$(cd "$here/../grafana" && pwd)

# promtool check config reads the files the configuration names, relative to its directory
# as on a Prometheus machine: the rules, the fleet's token and its file_sd targets.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/prometheus-scrape.yml" "$work/prometheus.yml"
cp "$here/mcp-raspi-alerts.yml" "$work/"
echo "a-token-of-the-viewer-role" >"$work/mcp-raspi.token"
mkdir "$work/mcp-raspi"
cat >"$work/mcp-raspi/workshop.yml" <<'TARGETS'
- targets: ["10.0.4.21:8000"]
  labels:
    instance: pi-workshop
    site: workshop
TARGETS

# Every check runs, so that one run shows every problem; any failure fails the whole.
status=0
promtool check config "$work/prometheus.yml" || status=1
promtool check rules "$here/mcp-raspi-alerts.yml" || status=1
(cd "$here" && promtool test rules mcp-raspi-alerts.test.yml) || status=1
python3 "$here/check-exprs.py" --names "$here/metric-names.txt" --promql-out "$work/dashboards.yml" \
    "$here/mcp-raspi-alerts.yml" "$here/mcp-raspi-alerts.test.yml" "$grafana"/*.json || status=1
echo "The dashboards' expressions:"
promtool check rules "$work/dashboards.yml" || status=1
if [ $status != 0 ]; then
    echo "check.sh: the Prometheus or Grafana examples have problems (above)" >&2
fi
exit $status

#!/bin/sh
# One command, the whole loop on this machine: the demo fleet (three small
# Python services, manifests/demo), its controller, and — when `prometheus`
# is installed — a Prometheus that scrapes it with tend's alert rules.
#
#   deploy/demo.sh                      # build, run; Ctrl-C stops
#   deploy/demo.sh --prometheus-config  # print the Prometheus config it would use
#
# Environment: TEND_BIN (a built tend; default: cargo build --release),
# TEND_DEMO_DIR (scratch space, default /tmp/tend-demo), TEND_DEMO_PROMETHEUS
# (listen address, default 127.0.0.1:9090). The controller listens on
# 127.0.0.1:9617. Services keep running when it stops, like in production;
# `deploy/demo.sh --clean` stops them.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${TEND_DEMO_DIR:-/tmp/tend-demo}
prom_listen=${TEND_DEMO_PROMETHEUS:-127.0.0.1:9090}
tend_listen=127.0.0.1:9617

# deploy/prometheus/prometheus.yml, pointed at the demo controller, every 5 s.
prometheus_config() {
  sed -e "s|scrape_interval: 30s|scrape_interval: 5s|" \
      -e "s|evaluation_interval: 30s|evaluation_interval: 5s|" \
      -e "s|^  - tend-alerts.yml|  - $repo/deploy/prometheus/tend-alerts.yml|" \
      -e "s|^          - tend-1.example.com:9617|          - $tend_listen|" \
      -e "/^          - tend-2.example.com:9617/d" \
      -e "s|shard: tencent|shard: demo|" \
      "$repo/deploy/prometheus/prometheus.yml"
}

# Stop what the demo's controller started, by its records.
clean() {
  for rec in "$repo"/.tend-demo/records/*.rec; do
    [ -f "$rec" ] || continue
    pid=$(sed -n 's/^pid=//p' "$rec" | tail -n 1)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && echo "stopped $(basename "$rec" .rec) (pid $pid)"
  done
  return 0
}

case ${1:-} in
  --prometheus-config) prometheus_config; exit 0 ;;
  --clean) clean; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--prometheus-config | --clean]" >&2; exit 2 ;;
esac

if [ -z "${TEND_BIN:-}" ]; then
  (cd "$repo" && cargo build --release -p tend)
  TEND_BIN=$repo/target/release/tend
fi
mkdir -p "$work"

prom_pid=
if command -v prometheus >/dev/null 2>&1; then
  prometheus_config > "$work/prometheus.yml"
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="$prom_listen" > "$work/prometheus.log" 2>&1 &
  prom_pid=$!
  trap 'kill "$prom_pid" 2>/dev/null || true' EXIT
else
  echo "demo: prometheus is not installed (apt-get install prometheus): metrics only at /metrics"
fi

cat <<EOF
demo: status page  http://$tend_listen/
demo: metrics      http://$tend_listen/metrics
${prom_pid:+demo: alerts       http://$prom_listen/alerts   (Prometheus, tend's rules)
}demo: make drift: kill "\$(sed -n 's/^pid=//p' $repo/.tend-demo/records/demo-web.rec)"
demo:             tend repairs it on the next tick (every 10 s); watch the page.
demo: reconcile now: $TEND_BIN trigger
EOF

cd "$repo"
# In the background so that a signal to this script reaches tend as SIGTERM:
# it finishes the running reconcile, then stops.
"$TEND_BIN" --log info run &
tend_pid=$!
trap 'kill -TERM "$tend_pid" 2>/dev/null || true' INT TERM
while kill -0 "$tend_pid" 2>/dev/null; do
  wait "$tend_pid" || true
done

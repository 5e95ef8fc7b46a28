#!/usr/bin/env bash
# Spark needs a Java runtime (17). Install one from the distribution when absent.
set -euo pipefail
if command -v java >/dev/null 2>&1; then
  exit 0
fi
echo "ensure_java: no java on PATH; installing openjdk-17-jre-headless" >&2
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless

#!/usr/bin/env bash
# Install everything the platform needs, from the registries only. Idempotent: a second run
# finds each part in place (stamp files record what was installed from which lock) and skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCAL=.local
mkdir -p "$LOCAL/stamps"
UV_VERSION=0.13.9

stamp_ok() { [[ -f "$LOCAL/stamps/$1" && "$(cat "$LOCAL/stamps/$1")" == "$2" ]]; }
stamp() { echo "$2" > "$LOCAL/stamps/$1"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

if ! command -v uv >/dev/null || [[ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]]; then
  echo "setup: installing uv $UV_VERSION"
  python3.11 -m pip install --quiet "uv==$UV_VERSION"
fi

# Debian's chromium for the Prefect UI browser test (Playwright drives it; no browser downloads).
if command -v chromium >/dev/null; then
  echo "setup: chromium in place"
else
  echo "setup: installing Debian's chromium"
  SUDO=$([[ $EUID -eq 0 ]] || echo sudo)  # root on CI
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi

# Debian's PostgreSQL binaries: the scale-out test makes its own cluster with initdb and pg_ctl.
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo "setup: postgresql in place"
else
  echo "setup: installing Debian's postgresql"
  SUDO=$([[ $EUID -eq 0 ]] || echo sudo)  # root on CI
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
fi

h=$(hash_of uv.lock pyproject.toml)
if [[ -x .venv/bin/python ]] && stamp_ok main-venv "$h"; then
  echo "setup: main environment up to date"
else
  echo "setup: main environment (.venv) from uv.lock"
  uv sync --frozen --python 3.11
  stamp main-venv "$h"
fi

h=$(hash_of infra/flink/requirements.lock)
if [[ -x .venv-flink/bin/python ]] && stamp_ok flink-venv "$h"; then
  echo "setup: Flink environment up to date"
else
  echo "setup: Flink environment (.venv-flink) from infra/flink/requirements.lock"
  [[ -x .venv-flink/bin/python ]] || uv venv --python 3.11 .venv-flink
  uv pip sync --python .venv-flink/bin/python infra/flink/requirements.lock
  rm -f "$LOCAL/stamps/flink-jars"
  stamp flink-venv "$h"
fi

h=$(hash_of infra/functions/requirements.lock)
if [[ -x .venv-functions/bin/python3 ]] && stamp_ok functions-venv "$h"; then
  echo "setup: functions environment up to date"
else
  # The Python that Pulsar's own functions worker starts its instances with (MLP_PULSAR_FUNCTIONS_WORKER).
  echo "setup: functions environment (.venv-functions) from infra/functions/requirements.lock"
  [[ -x .venv-functions/bin/python3 ]] || uv venv --python 3.11 .venv-functions
  uv pip sync --python .venv-functions/bin/python infra/functions/requirements.lock
  stamp functions-venv "$h"
fi

h=$(hash_of infra/jvm/pom.xml)
if stamp_ok jvm "$h" && [[ -x "$LOCAL/pulsar/bin/pulsar" ]]; then
  echo "setup: JVM artifacts up to date"
else
  echo "setup: JVM artifacts from Maven Central (infra/jvm/pom.xml)"
  rm -rf "$LOCAL/jars"
  mvn -q -B -f infra/jvm/pom.xml package
  rm -rf "$LOCAL/pulsar" && mkdir -p "$LOCAL/pulsar"
  tar xzf "$LOCAL"/dist/pulsar-server-distribution-*-bin.tar.gz -C "$LOCAL/pulsar" --strip-components=1
  rm -f "$LOCAL/stamps/flink-jars"
  stamp jvm "$h"
fi

# Connector jars go on Flink's own classpath (pyflink/lib): JDBC's DriverManager ignores
# jars added through pipeline.jars, and one place for all of them keeps the job simple.
PYFLINK_LIB=$(.venv-flink/bin/python -c 'import pyflink, os; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')
h=$(ls "$LOCAL/jars" | hash_of /dev/stdin)
if stamp_ok flink-jars "$h"; then
  echo "setup: Flink connector jars in place"
else
  echo "setup: copying connector jars into $PYFLINK_LIB"
  cp "$LOCAL"/jars/*.jar "$PYFLINK_LIB/"
  stamp flink-jars "$h"
fi
echo "setup: done in ${SECONDS}s"

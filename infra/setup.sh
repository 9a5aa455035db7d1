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
  # --inexact keeps the optional benchmark group (make bench) where it was installed.
  # --compile-bytecode: every process of the platform (flow runs, Ray workers, Flink's Python)
  # imports compiled modules from its first start, instead of compiling them at first use.
  uv sync --frozen --inexact --compile-bytecode --python 3.11
  stamp main-venv "$h"
fi

# A locked venv beside the main one: sync_venv <name> <folder> <lock>; returns 1 when it synced.
sync_venv() {
  local h
  h=$(hash_of "$3")
  if [[ -x "$2/bin/python" ]] && stamp_ok "$1-venv" "$h"; then
    echo "setup: $1 environment up to date"
    return 0
  fi
  echo "setup: $1 environment ($2) from $3"
  # Called as `sync_venv ... || ...`, where set -e is off: stop on a failure explicitly.
  [[ -x "$2/bin/python" ]] || uv venv --python 3.11 "$2" || exit 1
  uv pip sync --compile-bytecode --python "$2/bin/python" "$3" || exit 1
  stamp "$1-venv" "$h"
  return 1
}

# A new Flink environment needs the connector jars copied into it again.
sync_venv flink .venv-flink infra/flink/requirements.lock || rm -f "$LOCAL/stamps/flink-jars"
# The Python that Pulsar's own functions worker starts its instances with (MLP_PULSAR_FUNCTIONS_WORKER).
sync_venv functions .venv-functions infra/functions/requirements.lock || true

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

PYFLINK_LIB=$(.venv-flink/bin/python -c 'import pyflink, os; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')
# The platform's own Flink classes (infra/flink/java), compiled against the Flink and the
# connector jars (.local/jars; pyflink/lib gets them below).
JAVA_SRC=infra/flink/java
JAVA_JAR="$LOCAL/jars/mlplatform-flink.jar"
h=$(find "$JAVA_SRC" -type f | sort | xargs cat | hash_of /dev/stdin)
if stamp_ok flink-java "$h" && [[ -f "$JAVA_JAR" ]]; then
  echo "setup: platform Flink classes up to date"
else
  echo "setup: compiling $JAVA_SRC"
  build=$(mktemp -d)
  javac -nowarn --release 11 -d "$build" \
    -cp "$PYFLINK_LIB/*:$LOCAL/jars/*" \
    $(find "$JAVA_SRC" -name '*.java')
  cp -r "$JAVA_SRC/META-INF" "$build/"
  jar cf "$JAVA_JAR" -C "$build" .
  rm -rf "$build"
  stamp flink-java "$h"
fi

# Connector jars go on Flink's own classpath (pyflink/lib): JDBC's DriverManager ignores
# jars added through pipeline.jars, and one place for all of them keeps the job simple.
h=$( (ls "$LOCAL/jars"; cat "$JAVA_JAR") | hash_of /dev/stdin)
if stamp_ok flink-jars "$h"; then
  echo "setup: Flink connector jars in place"
else
  echo "setup: copying connector jars into $PYFLINK_LIB"
  cp "$LOCAL"/jars/*.jar "$PYFLINK_LIB/"
  stamp flink-jars "$h"
fi
echo "setup: done in ${SECONDS}s"

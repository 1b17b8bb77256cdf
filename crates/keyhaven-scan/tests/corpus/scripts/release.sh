#!/bin/sh
set -eu
export VAULT_ADDR=https://vault.internal:8200
export VAULT_TOKEN=@FAKE:vault@
export KEYHAVEN_TOKEN=@FAKE:keyhaven@
export CI_JOB_TOKEN_FALLBACK=@FAKE:gitlab@
./gradlew publish --no-daemon
